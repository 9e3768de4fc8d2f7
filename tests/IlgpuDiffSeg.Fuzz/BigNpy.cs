using System.Diagnostics;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Fuzz;

/// <summary>
/// Issue #13 class 5 at its real size: the features of one LSUN-256 image with blocks 5,6,7,8,12 at 3 steps, (8448, 256,
/// 256) float32 — a 2.21 GB .npy, past 2³¹ bytes — written with Npy.Write and read back with Npy.Read. Run in a child
/// process under DOTNET_GCHeapHardLimit of 3 GiB (NpyStreamingTests.FeaturesPast2GiBAreWrittenAndReadBack): the array
/// takes 2.2 GB, so a copy of the whole file in one byte array, as Npy.Write made before, cannot fit.
/// </summary>
public static class BigNpy
{
    public static int Run(string folder)
    {
        int[] shape = [8448, 256, 256];
        long count = (long)shape[0] * shape[1] * shape[2];
        string path = Path.Combine(folder, "features-lsun256.npy");
        var sw = Stopwatch.StartNew();
        var values = new float[count];
        for (long i = 0; i < count; i++)
        {
            values[i] = Value(i);
        }
        Npy.Write(path, values, shape);
        long bytes = new FileInfo(path).Length;
        Console.WriteLine($"wrote {path}: {bytes:N0} bytes ({bytes / (double)(1L << 31):F3} × 2^31) in {sw.Elapsed.TotalSeconds:F1} s");
        values = null;
        GC.Collect();
        sw.Restart();
        var a = Npy.Read(path);
        var back = a.ToFloat32(path);
        Console.WriteLine($"read {a.ShapeString} in {sw.Elapsed.TotalSeconds:F1} s");
        int wrong = 0;
        for (long i = 0; i < count; i += 9973)
        {
            wrong += back[i] == Value(i) ? 0 : 1;
        }
        wrong += back[count - 1] == Value(count - 1) ? 0 : 1;
        File.Delete(path);
        Console.WriteLine($"peak working set {Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30):F2} GiB; " +
                          $"{wrong} sampled values wrong");
        return bytes > int.MaxValue && a.Shape.SequenceEqual(shape) && wrong == 0 ? 0 : 1;
    }

    static float Value(long i) => (i % 1000003) * 1e-3f;
}
