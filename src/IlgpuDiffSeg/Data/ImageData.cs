// ImageData: listing a folder's images (a bounded, cycle-free walk) and finding the mask beside an image.

namespace IlgpuDiffSeg.Data;

/// <summary>Images and label masks as ddpm-segmentation reads them (docs/method.md, Data).</summary>
public static partial class ImageData
{
    static readonly string[] ImageExtensions = ["jpg", "jpeg", "png", "gif"];

    /// <summary>
    /// guided-diffusion's _list_image_files_recursively, then sorted: files with an image extension (any case), found
    /// in sorted order through sub-folders. PNG masks (<c>*_mask.png</c>) are not images.
    /// </summary>
    public static List<string> ListImages(string folder)
    {
        if (string.IsNullOrEmpty(folder) || !Directory.Exists(folder))
        {
            throw DiffSegException.For(folder, File.Exists(folder) ? "is a file, expected a folder of images" : "folder not found");
        }
        var found = new List<string>();
        var visited = new HashSet<string>(StringComparer.Ordinal);
        long entries = 0;
        Walk(folder, RealPath(folder, null), 0);
        found.Sort(StringComparer.Ordinal);
        return found;

        // Symbolic links to folders are followed, as the original's walk does, but each real folder is walked once (no
        // cycles), and the walk stops past MaxWalkEntries entries or MaxWalkDepth levels: a path such as /proc/self, whose
        // links lead to the whole file system, is refused instead of walked.
        void Walk(string dir, string real, int depth)
        {
            if (!visited.Add(real))
            {
                return;
            }
            if (depth > MaxWalkDepth)
            {
                throw DiffSegException.For(folder, $"has folders nested deeper than {MaxWalkDepth} levels ('{Shorten(dir)}'); " +
                                                   "point it at the image folder");
            }
            // Counted as they are listed, so a folder of millions of entries is refused before it is held.
            var children = new List<FileSystemInfo>();
            try
            {
                foreach (var child in new DirectoryInfo(dir).EnumerateFileSystemInfos())
                {
                    if (++entries > MaxWalkEntries)
                    {
                        throw DiffSegException.For(folder, $"holds more than {MaxWalkEntries:N0} files and folders; " +
                                                           "point it at the image folder");
                    }
                    children.Add(child);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw DiffSegException.For(folder, $"cannot list its folder '{Shorten(dir)}': {e.Message}");
            }
            children.Sort((a, b) => StringComparer.Ordinal.Compare(a.Name, b.Name));
            foreach (var child in children)
            {
                string name = child.Name;
                string entry = Path.Combine(dir, name);
                if (child is DirectoryInfo)
                {
                    string unlinked = real.TrimEnd('/') + "/" + name;
                    Walk(entry, child.LinkTarget is null ? unlinked : RealPath(entry, unlinked), depth + 1);
                    continue;
                }
                string ext = name.Contains('.') ? name[(name.LastIndexOf('.') + 1)..].ToLowerInvariant() : "";
                if (name.Contains('.') && ImageExtensions.Contains(ext) && !IsMaskName(name) && File.Exists(entry))
                {
                    found.Add(entry);
                }
            }
        }
    }

    static string Shorten(string s) => s.Length > 80 ? s[..40] + "…" + s[^39..] : s;

    [System.Runtime.InteropServices.DllImport("libc", CharSet = System.Runtime.InteropServices.CharSet.Ansi)]
    static extern IntPtr realpath(string path, IntPtr resolved);

    [System.Runtime.InteropServices.DllImport("libc")]
    static extern void free(IntPtr pointer);

    /// <summary>Folder walks stop past this many entries (ddpm-segmentation's data sets hold a few thousand).</summary>
    public const int MaxWalkEntries = 100_000;

    /// <summary>… and past this depth of sub-folders.</summary>
    public const int MaxWalkDepth = 32;

    /// <summary>
    /// A folder's identity for cycle detection: its canonical path (realpath(3), every link resolved) on Unix; elsewhere its
    /// link target when it is a link, else its parent's identity and its name.
    /// </summary>
    static string RealPath(string dir, string? unlinked)
    {
        if (!OperatingSystem.IsWindows())
        {
            IntPtr resolved = IntPtr.Zero;
            try
            {
                resolved = realpath(dir, IntPtr.Zero);
                if (resolved != IntPtr.Zero)
                {
                    return System.Runtime.InteropServices.Marshal.PtrToStringUTF8(resolved)!;
                }
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
            }
            finally
            {
                if (resolved != IntPtr.Zero)
                {
                    free(resolved);
                }
            }
        }
        try
        {
            var info = new DirectoryInfo(dir);
            return (info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? unlinked ?? info.FullName).TrimEnd('/');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Path.GetFullPath(dir);
        }
    }

    static bool IsMaskName(string name) => name.EndsWith("_mask.png", StringComparison.OrdinalIgnoreCase);

    /// <summary>The mask beside an image: <c>stem.npy</c> (the original's layout), else <c>stem_mask.png</c>; null if none.</summary>
    public static string? MaskPathFor(string imagePath)
    {
        string stem = Path.Combine(Path.GetDirectoryName(imagePath) ?? ".", Path.GetFileNameWithoutExtension(imagePath));
        foreach (var candidate in new[] { stem + ".npy", stem + "_mask.png" })
        {
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return null;
    }
}
