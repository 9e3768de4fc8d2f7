using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace IlgpuDiffSeg.IO;

/// <summary>A module-level name the pickle refers to (GLOBAL / STACK_GLOBAL), e.g. torch._utils._rebuild_tensor_v2.</summary>
public sealed record PyGlobal(string Module, string Name)
{
    public string FullName => $"{Module}.{Name}";
}

/// <summary>An object the reader does not model: the callable and arguments that would have built it.</summary>
public sealed record PyObject(PyGlobal Type, object?[] Args)
{
    public object? State { get; set; }
}

/// <summary>A Python dict, in insertion order.</summary>
public sealed class PyDict : List<KeyValuePair<object, object?>>
{
    public object? this[string key] => this.FirstOrDefault(kv => kv.Key is string s && s == key).Value;
}

/// <summary>
/// A pickle reader for data, not code: it executes nothing. Globals become <see cref="PyGlobal"/> markers, and
/// REDUCE/NEWOBJ/BUILD are answered by <see cref="Reduce"/> (a hook the caller sets) or recorded as
/// <see cref="PyObject"/>. Covers protocols 0–5 as written by torch.save.
/// </summary>
public sealed class PickleReader(Stream stream)
{
    static readonly object Mark = new();
    readonly BinaryReader reader = new(stream, Encoding.UTF8, leaveOpen: true);
    readonly List<object?> stack = new();
    readonly Dictionary<long, object?> memo = new();

    /// <summary>Builds an object from a callable and its arguments; return null to fall back to PyObject.</summary>
    public Func<PyGlobal, object?[], object?>? Reduce { get; init; }

    /// <summary>Resolves a persistent id (torch's storage references).</summary>
    public Func<object?, object?>? PersistentLoad { get; init; }

    public object? Load()
    {
        while (true)
        {
            byte op = reader.ReadByte();
            switch (op)
            {
                case 0x80: reader.ReadByte(); break;                       // PROTO
                case 0x95: reader.ReadInt64(); break;                      // FRAME
                case (byte)'.': return Pop();                              // STOP
                case (byte)'(': stack.Add(Mark); break;                    // MARK
                case (byte)'N': stack.Add(null); break;                    // NONE
                case 0x88: stack.Add(true); break;                         // NEWTRUE
                case 0x89: stack.Add(false); break;                        // NEWFALSE
                case (byte)'J': stack.Add((long)reader.ReadInt32()); break; // BININT
                case (byte)'K': stack.Add((long)reader.ReadByte()); break;  // BININT1
                case (byte)'M': stack.Add((long)reader.ReadUInt16()); break; // BININT2
                case 0x8a: stack.Add(ReadLong(reader.ReadByte())); break;  // LONG1
                case 0x8b: stack.Add(ReadLong(reader.ReadInt32())); break; // LONG4
                case (byte)'G':                                            // BINFLOAT (big-endian)
                    stack.Add(BinaryPrimitives.ReadDoubleBigEndian(reader.ReadBytes(8)));
                    break;
                case (byte)'I': stack.Add(ParseIntLine(ReadLine())); break; // INT
                case (byte)'L': stack.Add(long.Parse(ReadLine().TrimEnd('L'))); break; // LONG
                case (byte)'F': stack.Add(double.Parse(ReadLine(), System.Globalization.CultureInfo.InvariantCulture)); break;
                case (byte)'X': stack.Add(ReadUtf8(reader.ReadInt32())); break;   // BINUNICODE
                case 0x8c: stack.Add(ReadUtf8(reader.ReadByte())); break;         // SHORT_BINUNICODE
                case 0x8d: stack.Add(ReadUtf8(checked((int)reader.ReadInt64()))); break; // BINUNICODE8
                case (byte)'T': stack.Add(Encoding.Latin1.GetString(ReadExact(reader.ReadInt32()))); break; // BINSTRING
                case (byte)'U': stack.Add(Encoding.Latin1.GetString(ReadExact(reader.ReadByte()))); break;  // SHORT_BINSTRING
                case (byte)'B': stack.Add(ReadExact(reader.ReadInt32())); break;  // BINBYTES
                case (byte)'C': stack.Add(ReadExact(reader.ReadByte())); break;   // SHORT_BINBYTES
                case 0x8e: stack.Add(ReadExact(checked((int)reader.ReadInt64()))); break; // BINBYTES8
                case (byte)')': stack.Add(Array.Empty<object?>()); break;  // EMPTY_TUPLE
                case (byte)']': stack.Add(new List<object?>()); break;     // EMPTY_LIST
                case (byte)'}': stack.Add(new PyDict()); break;            // EMPTY_DICT
                case 0x8f: stack.Add(new List<object?>()); break;          // EMPTY_SET
                case (byte)'t': stack.Add(PopToMark().ToArray()); break;   // TUPLE
                case 0x85: stack.Add(new[] { Pop() }); break;              // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); stack.Add(new[] { a, b }); break; } // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); stack.Add(new[] { a, b, c }); break; } // TUPLE3
                case (byte)'l': stack.Add(PopToMark()); break;             // LIST
                case (byte)'d': stack.Add(ToDict(PopToMark())); break;     // DICT
                case (byte)'a': { var v = Pop(); ((List<object?>)Peek()!).Add(v); break; } // APPEND
                case (byte)'e': { var items = PopToMark(); ((List<object?>)Peek()!).AddRange(items); break; } // APPENDS
                case 0x90: { var items = PopToMark(); ((List<object?>)Peek()!).AddRange(items); break; } // ADDITEMS
                case 0x91: stack.Add(PopToMark()); break;                  // FROZENSET
                case (byte)'s': { var v = Pop(); var k = Pop(); AsDict(Peek()).Add(new(k!, v)); break; } // SETITEM
                case (byte)'u':                                            // SETITEMS
                {
                    var items = PopToMark();
                    var dict = AsDict(Peek());
                    for (int i = 0; i + 1 < items.Count; i += 2)
                    {
                        dict.Add(new(items[i]!, items[i + 1]));
                    }
                    break;
                }
                case (byte)'c':                                            // GLOBAL
                {
                    string module = ReadLine();
                    string name = ReadLine();
                    stack.Add(new PyGlobal(module, name));
                    break;
                }
                case 0x93: { var name = (string)Pop()!; var module = (string)Pop()!; stack.Add(new PyGlobal(module, name)); break; }
                case (byte)'R': { var args = AsTuple(Pop()); var fn = Pop(); stack.Add(Apply(fn, args)); break; } // REDUCE
                case 0x81: { var args = AsTuple(Pop()); var cls = Pop(); stack.Add(Apply(cls, args)); break; }   // NEWOBJ
                case 0x92: { Pop(); var args = AsTuple(Pop()); var cls = Pop(); stack.Add(Apply(cls, args)); break; } // NEWOBJ_EX
                case (byte)'b':                                            // BUILD
                {
                    var state = Pop();
                    if (Peek() is PyObject o)
                    {
                        o.State = state;
                    }
                    break;
                }
                case (byte)'Q': stack.Add(PersistentLoad is null ? Pop() : PersistentLoad(Pop())); break; // BINPERSID
                case (byte)'q': memo[reader.ReadByte()] = Peek(); break;   // BINPUT
                case (byte)'r': memo[reader.ReadUInt32()] = Peek(); break; // LONG_BINPUT
                case (byte)'p': memo[long.Parse(ReadLine())] = Peek(); break; // PUT
                case 0x94: memo[memo.Count] = Peek(); break;               // MEMOIZE
                case (byte)'h': stack.Add(GetMemo(reader.ReadByte())); break;   // BINGET
                case (byte)'j': stack.Add(GetMemo(reader.ReadUInt32())); break; // LONG_BINGET
                case (byte)'g': stack.Add(GetMemo(long.Parse(ReadLine()))); break; // GET
                case (byte)'0': Pop(); break;                              // POP
                case (byte)'1': PopToMark(); break;                        // POP_MARK
                case (byte)'2': stack.Add(Peek()); break;                  // DUP
                default:
                    throw new InvalidDataException($"unsupported pickle opcode 0x{op:x2}");
            }
        }
    }

    object? Apply(object? callable, object?[] args)
    {
        if (callable is not PyGlobal g)
        {
            throw new InvalidDataException("pickle calls something that is not a global");
        }
        return Reduce?.Invoke(g, args) ?? new PyObject(g, args);
    }

    object? GetMemo(long key) =>
        memo.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"pickle memo key {key} missing");

    object? Pop()
    {
        if (stack.Count == 0)
        {
            throw new InvalidDataException("pickle stack underflow");
        }
        var v = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return v;
    }

    object? Peek() => stack.Count > 0 ? stack[^1] : throw new InvalidDataException("pickle stack underflow");

    List<object?> PopToMark()
    {
        int i = stack.LastIndexOf(Mark);
        if (i < 0)
        {
            throw new InvalidDataException("pickle MARK missing");
        }
        var items = stack.GetRange(i + 1, stack.Count - i - 1);
        stack.RemoveRange(i, stack.Count - i);
        return items;
    }

    static PyDict ToDict(List<object?> items)
    {
        var d = new PyDict();
        for (int i = 0; i + 1 < items.Count; i += 2)
        {
            d.Add(new(items[i]!, items[i + 1]));
        }
        return d;
    }

    static PyDict AsDict(object? o) => o switch
    {
        PyDict d => d,
        PyObject { State: null } p => (PyDict)(p.State = new PyDict()),
        PyObject { State: PyDict d } => d,
        _ => throw new InvalidDataException("pickle SETITEM on a non-dict"),
    };

    static object?[] AsTuple(object? o) => o switch
    {
        object?[] t => t,
        List<object?> l => l.ToArray(),
        _ => throw new InvalidDataException("pickle arguments are not a tuple"),
    };

    object ReadLong(int length)
    {
        var bytes = ReadExact(length);
        var value = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        return value >= long.MinValue && value <= long.MaxValue ? (long)value : value;
    }

    static object ParseIntLine(string s) => s switch
    {
        "01" => true,
        "00" => false,
        _ => long.Parse(s),
    };

    string ReadUtf8(int length) => Encoding.UTF8.GetString(ReadExact(length));

    byte[] ReadExact(int length)
    {
        var b = reader.ReadBytes(length);
        if (b.Length != length)
        {
            throw new EndOfStreamException();
        }
        return b;
    }

    string ReadLine()
    {
        var sb = new StringBuilder();
        while (true)
        {
            byte c = reader.ReadByte();
            if (c == (byte)'\n')
            {
                return sb.ToString().TrimEnd('\r');
            }
            sb.Append((char)c);
        }
    }
}
