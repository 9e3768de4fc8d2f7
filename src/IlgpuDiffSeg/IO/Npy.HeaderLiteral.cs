// Npy: the strict parser of the .npy header's dict literal (descr, fortran_order, shape).

using System.Globalization;

namespace IlgpuDiffSeg.IO;

public static partial class Npy
{
    /// <summary>The header's dict literal: {'descr': str, 'fortran_order': bool, 'shape': tuple of ints}, each key once.</summary>
    static class HeaderLiteral
    {
        public static (string Descr, bool Fortran, long[] Shape) Parse(string s, string path)
        {
            int i = 0;
            string? descr = null;
            bool? fortran = null;
            long[]? shape = null;
            Skip(s, ref i);
            Expect(s, ref i, '{', path);
            while (true)
            {
                Skip(s, ref i);
                if (Peek(s, i) == '}')
                {
                    i++;
                    break;
                }
                string key = ReadString(s, ref i, path);
                Skip(s, ref i);
                Expect(s, ref i, ':', path);
                Skip(s, ref i);
                switch (key)
                {
                    case "descr" when descr is null:
                        descr = Peek(s, i) is '\'' or '"' ? ReadString(s, ref i, path)
                            : throw Malformed(path, "'descr' is not a string (structured dtypes are not supported)");
                        break;
                    case "fortran_order" when fortran is null:
                        fortran = ReadWord(s, ref i) switch
                        {
                            "True" => true,
                            "False" => false,
                            var w => throw Malformed(path, $"'fortran_order' is '{w}', expected True or False"),
                        };
                        break;
                    case "shape" when shape is null:
                        shape = ReadShape(s, ref i, path);
                        break;
                    case "descr" or "fortran_order" or "shape":
                        throw Malformed(path, $"the key '{key}' appears twice");
                    default:
                        throw Malformed(path, $"unexpected key '{key}'");
                }
                Skip(s, ref i);
                if (Peek(s, i) == ',')
                {
                    i++;
                    continue;
                }
                Skip(s, ref i);
                Expect(s, ref i, '}', path);
                break;
            }
            if (s.AsSpan(i).Trim(" \n\0").Length != 0)
            {
                throw Malformed(path, "text after the header's dict");
            }
            if (descr is null || fortran is null || shape is null)
            {
                throw Malformed(path, "the header lacks 'descr', 'fortran_order' or 'shape'");
            }
            return (descr, fortran.Value, shape);
        }

        static long[] ReadShape(string s, ref int i, string path)
        {
            Expect(s, ref i, '(', path);
            var dims = new List<long>();
            while (true)
            {
                Skip(s, ref i);
                if (Peek(s, i) == ')')
                {
                    i++;
                    return dims.ToArray();
                }
                int start = i;
                while (i < s.Length && char.IsAsciiDigit(s[i]))
                {
                    i++;
                }
                if (i == start || i - start > 18)
                {
                    throw Malformed(path, i == start ? "'shape' is not a tuple of non-negative integers"
                        : "'shape' has a dimension with more than 18 digits");
                }
                dims.Add(long.Parse(s.AsSpan(start, i - start), CultureInfo.InvariantCulture));
                if (Peek(s, i) == 'L')
                {
                    i++; // Python 2 longs
                }
                if (dims.Count > 32)
                {
                    throw Malformed(path, "'shape' has more than 32 dimensions");
                }
                Skip(s, ref i);
                if (Peek(s, i) == ',')
                {
                    i++;
                }
                else if (Peek(s, i) != ')')
                {
                    throw Malformed(path, "'shape' is not a tuple of non-negative integers");
                }
            }
        }

        static string ReadString(string s, ref int i, string path)
        {
            char q = Peek(s, i);
            if (q is not ('\'' or '"'))
            {
                throw Malformed(path, "expected a quoted key");
            }
            int end = s.IndexOf(q, i + 1);
            if (end < 0 || end - i > 64)
            {
                throw Malformed(path, "unterminated string");
            }
            string value = s[(i + 1)..end];
            i = end + 1;
            return value;
        }

        static string ReadWord(string s, ref int i)
        {
            int start = i;
            while (i < s.Length && char.IsAsciiLetter(s[i]))
            {
                i++;
            }
            return s[start..i];
        }

        static char Peek(string s, int i) => i < s.Length ? s[i] : '\0';

        static void Skip(string s, ref int i)
        {
            while (i < s.Length && s[i] is ' ' or '\t')
            {
                i++;
            }
        }

        static void Expect(string s, ref int i, char c, string path)
        {
            if (Peek(s, i) != c)
            {
                throw Malformed(path, $"expected '{c}' at header byte {i}");
            }
            i++;
        }

        static DiffSegException Malformed(string path, string what) => DiffSegException.For(path, $"malformed .npy header: {what}");
    }
}
