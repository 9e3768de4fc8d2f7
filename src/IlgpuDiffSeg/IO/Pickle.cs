using System.Buffers.Binary;
using System.Globalization;
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

/// <summary>A malformed pickle, or one past the reader's limits; the message says which.</summary>
public sealed class PickleException(string message) : Exception(message);

/// <summary>
/// A pickle reader for data, not code: it executes nothing. Globals become <see cref="PyGlobal"/> markers, and
/// REDUCE/NEWOBJ/BUILD are answered by <see cref="Reduce"/> (a hook the caller sets) or recorded as
/// <see cref="PyObject"/>. Covers protocols 0–5 as written by torch.save.
/// Bounded by its input: it reads at most <see cref="MaxBytes"/> bytes, every length prefix is checked against the bytes
/// left before anything is allocated, and it pushes at most <see cref="MaxObjects"/> values (each push makes at most one
/// object), so a hostile pickle costs at most a few hundred MB whatever it claims. Every failure is a
/// <see cref="PickleException"/>.
/// </summary>
public sealed class PickleReader(Stream stream)
{
    static readonly object Mark = new();
    readonly List<object?> stack = new();
    readonly Dictionary<long, object?> memo = new();
    readonly byte[] one = new byte[1];
    long consumed;
    long pushes;

    /// <summary>The most bytes the reader consumes: a torch state_dict's data.pkl is ~100 KB for a 550M-parameter UNet.</summary>
    public long MaxBytes { get; init; } = 32L << 20;

    /// <summary>The most values pushed in all (about 15 per tensor in a state_dict).</summary>
    public long MaxObjects { get; init; } = 1L << 22;

    /// <summary>Longest text line (INT, LONG, FLOAT, GLOBAL names, PUT/GET keys).</summary>
    const int MaxLine = 1024;

    /// <summary>Longest LONG1/LONG4 integer, in bytes; torch pickles only small integers.</summary>
    const int MaxLongBytes = 256;

    /// <summary>Builds an object from a callable and its arguments; return null to fall back to PyObject.</summary>
    public Func<PyGlobal, object?[], object?>? Reduce { get; init; }

    /// <summary>Resolves a persistent id (torch's storage references).</summary>
    public Func<object?, object?>? PersistentLoad { get; init; }

    public object? Load()
    {
        while (true)
        {
            byte op = ReadByte();
            switch (op)
            {
                case 0x80:                                                 // PROTO
                {
                    int proto = ReadByte();
                    if (proto > 5)
                    {
                        throw Fail($"pickle protocol {proto} is newer than 5");
                    }
                    break;
                }
                case 0x95: ReadInt64(); break;                             // FRAME (a hint; the bytes follow inline)
                case (byte)'.': return Pop();                              // STOP
                case (byte)'(': Push(Mark); break;                         // MARK
                case (byte)'N': Push(null); break;                         // NONE
                case 0x88: Push(true); break;                              // NEWTRUE
                case 0x89: Push(false); break;                             // NEWFALSE
                case (byte)'J': Push((long)ReadInt32()); break;            // BININT
                case (byte)'K': Push((long)ReadByte()); break;             // BININT1
                case (byte)'M': Push((long)ReadUInt16()); break;           // BININT2
                case 0x8a: Push(ReadLong(ReadByte())); break;              // LONG1
                case 0x8b: Push(ReadLong(ReadInt32())); break;             // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadExact(8))); break; // BINFLOAT
                case (byte)'I': Push(ParseIntLine(ReadLine())); break;     // INT
                case (byte)'L': Push(ParseLongLine(ReadLine())); break;    // LONG
                case (byte)'F': Push(ParseFloatLine(ReadLine())); break;   // FLOAT
                case (byte)'X': Push(ReadUtf8(ReadUInt32())); break;       // BINUNICODE
                case 0x8c: Push(ReadUtf8(ReadByte())); break;              // SHORT_BINUNICODE
                case 0x8d: Push(ReadUtf8(ReadUInt64())); break;            // BINUNICODE8
                case (byte)'T': Push(Encoding.Latin1.GetString(ReadExact(ReadInt32()))); break; // BINSTRING
                case (byte)'U': Push(Encoding.Latin1.GetString(ReadExact(ReadByte()))); break;  // SHORT_BINSTRING
                case (byte)'B': Push(ReadExact(ReadUInt32())); break;      // BINBYTES
                case (byte)'C': Push(ReadExact(ReadByte())); break;        // SHORT_BINBYTES
                case 0x8e: Push(ReadExact(ReadUInt64())); break;           // BINBYTES8
                case 0x96: Push(ReadExact(ReadUInt64())); break;           // BYTEARRAY8
                case (byte)')': Push(Array.Empty<object?>()); break;       // EMPTY_TUPLE
                case (byte)']': Push(new List<object?>()); break;          // EMPTY_LIST
                case (byte)'}': Push(new PyDict()); break;                 // EMPTY_DICT
                case 0x8f: Push(new List<object?>()); break;               // EMPTY_SET
                case (byte)'t': Push(PopToMark().ToArray()); break;        // TUPLE
                case 0x85: Push(new[] { Pop() }); break;                   // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; } // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; } // TUPLE3
                case (byte)'l': Push(PopToMark()); break;                  // LIST
                case (byte)'d': Push(ToDict(PopToMark())); break;          // DICT
                case (byte)'a': { var v = Pop(); AsList(Peek(), "APPEND").Add(v); break; } // APPEND
                case (byte)'e': { var items = PopToMark(); AsList(Peek(), "APPENDS").AddRange(items); break; } // APPENDS
                case 0x90: { var items = PopToMark(); AsList(Peek(), "ADDITEMS").AddRange(items); break; } // ADDITEMS
                case 0x91: Push(PopToMark()); break;                       // FROZENSET
                case (byte)'s': { var v = Pop(); var k = Pop(); AsDict(Peek()).Add(new(Key(k), v)); break; } // SETITEM
                case (byte)'u':                                            // SETITEMS
                {
                    var items = PopToMark();
                    if (items.Count % 2 != 0)
                    {
                        throw Fail("pickle SETITEMS with an odd number of items");
                    }
                    var dict = AsDict(Peek());
                    for (int i = 0; i + 1 < items.Count; i += 2)
                    {
                        dict.Add(new(Key(items[i]), items[i + 1]));
                    }
                    break;
                }
                case (byte)'c':                                            // GLOBAL
                {
                    string module = ReadLine();
                    string name = ReadLine();
                    Push(new PyGlobal(module, name));
                    break;
                }
                case 0x93:                                                 // STACK_GLOBAL
                {
                    var name = Pop();
                    var module = Pop();
                    if (module is not string m || name is not string n)
                    {
                        throw Fail("pickle STACK_GLOBAL with a module or name that is not a string");
                    }
                    Push(new PyGlobal(m, n));
                    break;
                }
                case (byte)'R': { var args = AsTuple(Pop()); var fn = Pop(); Push(Apply(fn, args)); break; } // REDUCE
                case 0x81: { var args = AsTuple(Pop()); var cls = Pop(); Push(Apply(cls, args)); break; }   // NEWOBJ
                case 0x92: { Pop(); var args = AsTuple(Pop()); var cls = Pop(); Push(Apply(cls, args)); break; } // NEWOBJ_EX
                case (byte)'b':                                            // BUILD
                {
                    var state = Pop();
                    if (Peek() is PyObject o)
                    {
                        o.State = state;
                    }
                    break;
                }
                case (byte)'Q': { var pid = Pop(); Push(PersistentLoad is null ? pid : PersistentLoad(pid)); break; } // BINPERSID
                case (byte)'q': memo[ReadByte()] = Peek(); break;          // BINPUT
                case (byte)'r': memo[ReadUInt32()] = Peek(); break;        // LONG_BINPUT
                case (byte)'p': memo[ParseMemoKey(ReadLine())] = Peek(); break; // PUT
                case 0x94: memo[memo.Count] = Peek(); break;               // MEMOIZE
                case (byte)'h': Push(GetMemo(ReadByte())); break;          // BINGET
                case (byte)'j': Push(GetMemo(ReadUInt32())); break;        // LONG_BINGET
                case (byte)'g': Push(GetMemo(ParseMemoKey(ReadLine()))); break; // GET
                case (byte)'0': Pop(); break;                              // POP
                case (byte)'1': PopToMark(); break;                        // POP_MARK
                case (byte)'2': Push(Peek()); break;                       // DUP
                default:
                    throw Fail($"unsupported pickle opcode 0x{op:x2}" +
                               (op is (byte)'i' or (byte)'o' or 0x82 or 0x83 or 0x84
                                   ? " (it would call code; this reader never does)"
                                   : ""));
            }
        }
    }

    static PickleException Fail(string message) => new(message);

    void Push(object? value)
    {
        if (++pushes > MaxObjects)
        {
            throw Fail($"pickle builds more than {MaxObjects:N0} objects; a state_dict needs far fewer");
        }
        stack.Add(value);
    }

    object? Apply(object? callable, object?[] args)
    {
        if (callable is not PyGlobal g)
        {
            throw Fail("pickle calls something that is not a global");
        }
        return Reduce?.Invoke(g, args) ?? new PyObject(g, args);
    }

    object? GetMemo(long key) => memo.TryGetValue(key, out var v) ? v : throw Fail($"pickle memo key {key} missing");

    object? Pop()
    {
        if (stack.Count == 0)
        {
            throw Fail("pickle stack underflow");
        }
        var v = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        if (ReferenceEquals(v, Mark))
        {
            throw Fail("pickle pops a MARK as a value");
        }
        return v;
    }

    object? Peek()
    {
        if (stack.Count == 0)
        {
            throw Fail("pickle stack underflow");
        }
        return ReferenceEquals(stack[^1], Mark) ? throw Fail("pickle uses a MARK as a value") : stack[^1];
    }

    List<object?> PopToMark()
    {
        int i = stack.LastIndexOf(Mark);
        if (i < 0)
        {
            throw Fail("pickle MARK missing");
        }
        var items = stack.GetRange(i + 1, stack.Count - i - 1);
        stack.RemoveRange(i, stack.Count - i);
        return items;
    }

    static object Key(object? k) => k ?? throw Fail("pickle dict key is None");

    static PyDict ToDict(List<object?> items)
    {
        if (items.Count % 2 != 0)
        {
            throw Fail("pickle DICT with an odd number of items");
        }
        var d = new PyDict();
        for (int i = 0; i + 1 < items.Count; i += 2)
        {
            d.Add(new(Key(items[i]), items[i + 1]));
        }
        return d;
    }

    static PyDict AsDict(object? o) => o switch
    {
        PyDict d => d,
        PyObject { State: null } p => (PyDict)(p.State = new PyDict()),
        PyObject { State: PyDict d } => d,
        _ => throw Fail("pickle SETITEM on something that is not a dict"),
    };

    static List<object?> AsList(object? o, string op) =>
        o as List<object?> ?? throw Fail($"pickle {op} on something that is not a list");

    static object?[] AsTuple(object? o) => o switch
    {
        object?[] t => t,
        List<object?> l => l.ToArray(),
        _ => throw Fail("pickle arguments are not a tuple"),
    };

    object ReadLong(long length)
    {
        if (length < 0 || length > MaxLongBytes)
        {
            throw Fail($"pickle LONG of {length} bytes (at most {MaxLongBytes} are read)");
        }
        var value = new BigInteger(ReadExact(length), isUnsigned: false, isBigEndian: false);
        return value >= long.MinValue && value <= long.MaxValue ? (object)(long)value : value;
    }

    static object ParseIntLine(string s)
    {
        if (s == "01")
        {
            return true;
        }
        if (s == "00")
        {
            return false;
        }
        return ParseLongLine(s);
    }

    static object ParseLongLine(string s)
    {
        string digits = s.EndsWith('L') ? s[..^1] : s;
        if (long.TryParse(digits, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v))
        {
            return v;
        }
        if (digits.Length <= 2 * MaxLongBytes &&
            BigInteger.TryParse(digits, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var big))
        {
            return big;
        }
        throw Fail($"pickle integer literal '{Shorten(s)}' is malformed");
    }

    static double ParseFloatLine(string s) =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
            ? v
            : throw Fail($"pickle float literal '{Shorten(s)}' is malformed");

    static long ParseMemoKey(string s) =>
        long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long v)
            ? v
            : throw Fail($"pickle memo key '{Shorten(s)}' is malformed");

    static string Shorten(string s) => s.Length > 40 ? s[..40] + "…" : s;

    string ReadUtf8(long length)
    {
        var bytes = ReadExact(length);
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Fail("pickle string is not valid UTF-8");
        }
    }

    byte ReadByte()
    {
        Consume(1);
        int n;
        try
        {
            n = stream.Read(one, 0, 1);
        }
        catch (IOException e)
        {
            throw Fail($"pickle stream unreadable ({e.Message.TrimEnd('.')})");
        }
        return n == 1 ? one[0] : throw Fail("pickle truncated (it ends before STOP)");
    }

    void Consume(long count)
    {
        if (count > MaxBytes - consumed)
        {
            throw Fail(consumed + count > MaxBytes && count < MaxBytes
                ? $"pickle is longer than {InputFile.Describe(MaxBytes)}; a state_dict's is far shorter"
                : $"pickle claims a {count:N0}-byte value, longer than the {InputFile.Describe(MaxBytes)} it may hold");
        }
        consumed += count;
    }

    byte[] ReadExact(long length)
    {
        if (length < 0)
        {
            throw Fail($"pickle length {length} is negative");
        }
        Consume(length);
        var b = new byte[length];
        try
        {
            stream.ReadExactly(b);
        }
        catch (EndOfStreamException)
        {
            throw Fail("pickle truncated (a value runs past its end)");
        }
        catch (IOException e)
        {
            throw Fail($"pickle stream unreadable ({e.Message.TrimEnd('.')})");
        }
        return b;
    }

    int ReadInt32() => BinaryPrimitives.ReadInt32LittleEndian(ReadExact(4));

    long ReadUInt32() => BinaryPrimitives.ReadUInt32LittleEndian(ReadExact(4));

    int ReadUInt16() => BinaryPrimitives.ReadUInt16LittleEndian(ReadExact(2));

    long ReadInt64() => BinaryPrimitives.ReadInt64LittleEndian(ReadExact(8));

    long ReadUInt64()
    {
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(ReadExact(8));
        return v > long.MaxValue ? long.MaxValue : (long)v;
    }

    string ReadLine()
    {
        var sb = new StringBuilder();
        while (true)
        {
            byte c = ReadByte();
            if (c == (byte)'\n')
            {
                return sb.ToString().TrimEnd('\r');
            }
            if (sb.Length >= MaxLine)
            {
                throw Fail($"pickle text line longer than {MaxLine} bytes");
            }
            sb.Append((char)c);
        }
    }
}
