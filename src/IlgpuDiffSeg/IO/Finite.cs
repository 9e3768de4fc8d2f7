// Finite: vectorised search for NaN and ±Inf in float data.

using System.Runtime.InteropServices;

namespace IlgpuDiffSeg.IO;

/// <summary>Finding NaN and ±Inf fast: x − x is 0 for every finite x and NaN otherwise.</summary>
public static class Finite
{
    public static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            var v = MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(values);
            for (int k = 0; k < v.Length; k++)
            {
                if (!System.Numerics.Vector.EqualsAll(v[k] - v[k], System.Numerics.Vector<float>.Zero))
                {
                    break;
                }
                i += System.Numerics.Vector<float>.Count;
            }
        }
        for (; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }
        return -1;
    }

    public static string Name(float v) => float.IsNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
}
