using System.Buffers.Binary;
using System.IO.Compression;

namespace IlgpuDiffSeg.Data;

/// <summary>
/// Checks a PNG's structure before it is decoded, as libpng would refuse it: every chunk inside the file, a valid IHDR
/// first (sizes, bit depth and colour type that go together), the pixel count within the reader's limit, and image data
/// (the IDAT chunks, one zlib stream) that inflates to at least what IHDR implies. The inflation streams and stops at that
/// size, so a small file claiming gigabytes costs nothing. ImageSharp 2.1 alone fills a truncated image with zeros and
/// skips chunks that run past the end; this turns both into refusals naming the file.
/// </summary>
public static class PngStructure
{
    static readonly byte[] Signature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    public static bool IsPng(ReadOnlySpan<byte> head) => head.Length >= 8 && head[..8].SequenceEqual(Signature);

    public static void Check(string path, Stream file, long maxPixels)
    {
        long length = file.Length;
        var idat = new List<(long Offset, long Length)>();
        var head = new byte[8];
        Read(file, head, path);
        if (!IsPng(head))
        {
            throw DiffSegException.For(path, "not a PNG file (bad signature)");
        }
        int width = 0, height = 0, bitDepth = 0, colourType = 0, interlace = 0;
        bool sawIhdr = false, idatEnded = false;
        while (file.Position < length)
        {
            if (length - file.Position < 12)
            {
                throw DiffSegException.For(path, "truncated PNG: a chunk header runs past the end of the file");
            }
            Read(file, head, path);
            long chunkLength = BinaryPrimitives.ReadUInt32BigEndian(head);
            string type = System.Text.Encoding.Latin1.GetString(head, 4, 4);
            if (!type.All(char.IsAsciiLetter))
            {
                throw DiffSegException.For(path, $"PNG chunk type '{Printable(type)}' at byte {file.Position - 4} is not four letters");
            }
            if (chunkLength > int.MaxValue || chunkLength + 4 > length - file.Position)
            {
                throw DiffSegException.For(path, $"PNG chunk '{type}' claims {chunkLength:N0} bytes, past the end of the file");
            }
            if (!sawIhdr)
            {
                if (type != "IHDR" || chunkLength != 13)
                {
                    throw DiffSegException.For(path, "PNG does not start with a 13-byte IHDR chunk");
                }
                var ihdr = new byte[13];
                Read(file, ihdr, path);
                long w = BinaryPrimitives.ReadUInt32BigEndian(ihdr), h = BinaryPrimitives.ReadUInt32BigEndian(ihdr.AsSpan(4));
                (bitDepth, colourType, interlace) = (ihdr[8], ihdr[9], ihdr[12]);
                if (w == 0 || h == 0 || w > int.MaxValue || h > int.MaxValue)
                {
                    throw DiffSegException.For(path, $"PNG header says {w}×{h} pixels");
                }
                if (w * h > maxPixels)
                {
                    throw DiffSegException.For(path, $"is {w}×{h}, {w * h:N0} pixels: more than the {maxPixels:N0} this reader " +
                                                     "decodes; resize it first");
                }
                bool depthOk = colourType switch
                {
                    0 => bitDepth is 1 or 2 or 4 or 8 or 16,
                    3 => bitDepth is 1 or 2 or 4 or 8,
                    2 or 4 or 6 => bitDepth is 8 or 16,
                    _ => false,
                };
                if (!depthOk || ihdr[10] != 0 || ihdr[11] != 0 || interlace > 1)
                {
                    throw DiffSegException.For(path, $"PNG header is invalid (bit depth {bitDepth}, colour type {colourType}, " +
                                                     $"compression {ihdr[10]}, filter {ihdr[11]}, interlace {interlace})");
                }
                (width, height) = ((int)w, (int)h);
                sawIhdr = true;
                file.Seek(4, SeekOrigin.Current);
                continue;
            }
            if (type == "IDAT")
            {
                if (idatEnded)
                {
                    throw DiffSegException.For(path, "PNG image data (IDAT) is split by other chunks");
                }
                idat.Add((file.Position, chunkLength));
            }
            else if (idat.Count > 0)
            {
                idatEnded = true;
            }
            file.Seek(chunkLength + 4, SeekOrigin.Current);
            if (type == "IEND")
            {
                break;
            }
        }
        if (!sawIhdr || idat.Count == 0)
        {
            throw DiffSegException.For(path, sawIhdr ? "PNG has no image data (IDAT)" : "empty PNG");
        }
        long expected = ImageDataLength(width, height, bitDepth, colourType, interlace);
        long inflated;
        try
        {
            using var zlib = new ZLibStream(new ChunkStream(file, idat), CompressionMode.Decompress);
            var buffer = new byte[1 << 16];
            inflated = 0;
            int n;
            while (inflated < expected && (n = zlib.Read(buffer, 0, (int)Math.Min(buffer.Length, expected - inflated))) > 0)
            {
                inflated += n;
            }
        }
        catch (Exception e) when (e is InvalidDataException or IOException)
        {
            // ZLibException (an IOException) for what zlib itself refuses, e.g. a stream that asks for a preset dictionary.
            throw DiffSegException.For(path, $"PNG image data is not a valid zlib stream ({e.Message.TrimEnd('.')})");
        }
        if (inflated < expected)
        {
            throw DiffSegException.For(path, $"truncated PNG: its image data inflates to {inflated:N0} bytes, {width}×{height} pixels " +
                                             $"need {expected:N0}");
        }
    }

    /// <summary>Bytes of filtered scanlines (a filter byte per row) for the image, through the 7 Adam7 passes when interlaced.</summary>
    static long ImageDataLength(int width, int height, int bitDepth, int colourType, int interlace)
    {
        int channels = colourType switch { 0 or 3 => 1, 4 => 2, 2 => 3, _ => 4 };
        long Rows(long w, long h) => w == 0 || h == 0 ? 0 : h * (1 + (w * channels * bitDepth + 7) / 8);
        if (interlace == 0)
        {
            return Rows(width, height);
        }
        (int X0, int Y0, int Dx, int Dy)[] passes =
            [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)];
        return passes.Sum(p => Rows((width - p.X0 + p.Dx - 1) / p.Dx, (height - p.Y0 + p.Dy - 1) / p.Dy));
    }

    static string Printable(string s) => new(s.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '?').ToArray());

    static void Read(Stream s, byte[] buffer, string path)
    {
        try
        {
            s.ReadExactly(buffer);
        }
        catch (EndOfStreamException)
        {
            throw DiffSegException.For(path, "truncated PNG");
        }
    }

    /// <summary>The payloads of the IDAT chunks as one stream.</summary>
    sealed class ChunkStream(Stream file, List<(long Offset, long Length)> chunks) : Stream
    {
        int chunk;
        long within;

        public override int Read(byte[] buffer, int offset, int count)
        {
            while (chunk < chunks.Count && within == chunks[chunk].Length)
            {
                chunk++;
                within = 0;
            }
            if (chunk == chunks.Count)
            {
                return 0;
            }
            file.Position = chunks[chunk].Offset + within;
            int n = file.Read(buffer, offset, (int)Math.Min(count, chunks[chunk].Length - within));
            within += n;
            return n;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
