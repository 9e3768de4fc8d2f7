using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using MathNet.Numerics.Distributions;
using MathNet.Numerics.Random;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// The ε that q_sample adds. With share_noise (every ddpm.json) one tensor serves every image and step: loaded from
/// noise_path — the original's draw is torch's CUDA generator with seed 0, which only PyTorch can reproduce, so export it
/// once to .npy for parity — or drawn from N(0, 1) with <c>seed</c>. Without share_noise each image gets its own ε per step,
/// drawn from the seed and the image's index.
/// </summary>
public sealed class NoiseSource
{
    readonly float[]? shared;
    readonly int seed;
    readonly int size;
    readonly int steps;

    public string Description { get; }

    NoiseSource(float[]? shared, int seed, int size, int steps, string description)
    {
        this.shared = shared;
        this.seed = seed;
        this.size = size;
        this.steps = steps;
        Description = description;
    }

    public static NoiseSource Create(ExperimentConfig c)
    {
        int size = c.ImageSize, n = 3 * size * size;
        if (c.ShareNoise && c.NoisePath is not null)
        {
            var a = Npy.Read(c.NoisePath);
            if (a.Count != n || (a.Shape.Length != 3 && a.Shape.Length != 4) || a.Shape[^3] != 3)
            {
                throw DiffSegException.For(c.NoisePath, $"noise shape is {a.ShapeString}, expected (1, 3, {size}, {size})");
            }
            var values = a.ToFloat32(c.NoisePath);
            Npy.RequireFinite(c.NoisePath, values, a.Shape);
            return new NoiseSource(values, c.Seed, size, c.Steps.Length, $"shared, from {c.NoisePath}");
        }
        if (c.ShareNoise)
        {
            return new NoiseSource(Draw(n, c.Seed), c.Seed, size, c.Steps.Length, $"shared, N(0,1) drawn with seed {c.Seed}");
        }
        return new NoiseSource(null, c.Seed, size, c.Steps.Length, $"per image and step, seed {c.Seed}");
    }

    /// <summary>Standard normal values from a Mersenne Twister seeded with <paramref name="seed"/>.</summary>
    public static float[] Draw(int count, int seed)
    {
        var normal = new Normal(0, 1, new MersenneTwister(seed));
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = (float)normal.Sample();
        }
        return values;
    }

    /// <summary>ε for one image: (3, H, W) when shared, else (S, 3, H, W). The caller owns the tensor.</summary>
    public Tensor For(ComputeDevice dev, int imageIndex)
    {
        if (shared is not null)
        {
            return dev.Upload(shared, 3, size, size);
        }
        return dev.Upload(Draw(steps * 3 * size * size, unchecked(seed * 7919 + imageIndex + 1)), steps, 3, size, size);
    }
}
