using IlgpuDiffSeg.Data;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// The batches a diffusion model trains on, as a function of the step: batch s is the same whether a run gets there
/// straight or resumes at s, so a resumed run ends with the weights of an uninterrupted one.
/// </summary>
public interface ITrainingImages : IDisposable
{
    int ImageSize { get; }

    /// <summary>Images (N, 3, S, S) in [−1, 1] and, for class-conditional models, labels (N).</summary>
    (float[] Images, long[]? Labels) Batch(long step);

    string Describe();
}

/// <summary>
/// A folder read as image_datasets.py reads it (ImageDataset: decoded ahead on the thread pool, shuffled and flipped by
/// the seed), started at the resumed step.
/// </summary>
public sealed class FolderImages : ITrainingImages
{
    readonly ImageDataset dataset;
    long next;

    public FolderImages(string folder, int imageSize, int batchSize, bool classCond, bool randomFlip, int seed, long firstStep)
    {
        dataset = new ImageDataset(folder, new ImageDatasetOptions
        {
            ImageSize = imageSize, BatchSize = batchSize, ClassCond = classCond, RandomFlip = randomFlip, Seed = seed,
            FirstBatch = firstStep,
        });
        next = firstStep;
        ImageSize = imageSize;
        Folder = folder;
    }

    public int ImageSize { get; }
    public string Folder { get; }

    public (float[] Images, long[]? Labels) Batch(long step)
    {
        if (step != next)
        {
            throw new InvalidOperationException($"the image stream is at batch {next}, not {step}");
        }
        next++;
        var b = dataset.NextBatch();
        return (b.Images, b.Labels);
    }

    public string Describe() => $"{dataset.Files.Count} images in {Folder}" +
                                (dataset.ClassNames.Count > 0 ? $", {dataset.ClassNames.Count} classes" : "");

    public void Dispose() => dataset.Dispose();
}

/// <summary>The demo's unlabelled scenes (SyntheticScenes), an endless stream drawn from the seed: nothing on disk.</summary>
public sealed class SyntheticImages(int imageSize, int batchSize, int seed) : ITrainingImages
{
    public const string Name = "synthetic-scenes";

    readonly SyntheticScenes.UnlabelledStream stream = new(imageSize, seed);

    public int ImageSize => imageSize;

    public (float[] Images, long[]? Labels) Batch(long step)
    {
        stream.Position = step * batchSize;
        return (stream.NextBatch(batchSize), null);
    }

    public string Describe() => $"an endless stream of synthetic {imageSize}² scenes (seed {seed})";

    public void Dispose()
    {
    }
}
