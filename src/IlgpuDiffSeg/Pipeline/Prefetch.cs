namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// Streams work items in order while the next one is prepared on the thread pool: the host decodes image i + 1 while
/// the device extracts features of image i, and only two images are ever held, whatever the number of images.
/// </summary>
public static class Prefetch
{
    public static IEnumerable<T> Stream<T>(int count, Func<int, T> load)
    {
        Task<T>? next = count > 0 ? Task.Run(() => load(0)) : null;
        for (int i = 0; i < count; i++)
        {
            // GetResult rethrows the loader's own exception (a DiffSegException naming the bad file).
            T item = next!.GetAwaiter().GetResult();
            int following = i + 1;
            next = following < count ? Task.Run(() => load(following)) : null;
            yield return item;
        }
    }
}
