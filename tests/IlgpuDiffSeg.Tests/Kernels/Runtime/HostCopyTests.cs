using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// Host↔device copies while another thread forces compacting collections. ILGPU's copies that take a `ref T` do not pin:
/// without ViewExtensions pinning the host memory this test crashes the test host with a segmentation fault (3 runs of 3),
/// and in the full suite a moved array came back all zeros (twice in about a dozen runs).
/// </summary>
[Collection("cpu")]
public sealed class HostCopyTests(CpuDeviceFixture f)
{
    [Fact]
    public void CopiesSurviveCompactingCollectionsOnAnotherThread()
    {
        var device = f.Device;
        var values = Enumerable.Range(1, 16384).Select(i => (float)i).ToArray();
        using var tensor = device.Upload(values, values.Length);
        using var stop = new CancellationTokenSource();
        var churn = new Thread(() =>
        {
            var kept = new List<byte[]>();
            var random = new Random(1);
            while (!stop.IsCancellationRequested)
            {
                kept.Add(new byte[random.Next(16, 4096)]);
                if (kept.Count > 2000)
                {
                    kept.RemoveRange(0, 1000);
                }
                if (random.Next(50) == 0)
                {
                    GC.Collect(0, GCCollectionMode.Forced, blocking: true, compacting: true);
                }
            }
        }) { IsBackground = true };
        churn.Start();
        int wrong = 0;
        try
        {
            for (int i = 0; i < 5000; i++)
            {
                // Fresh gen-0 arrays between small allocations: the ones a compacting collection moves.
                var spacer = new byte[1 + i % 1999];
                var copy = tensor.ToArray();
                if (copy[0] != 1 || copy[^1] != values.Length)
                {
                    wrong++;
                }
                tensor.CopyFrom(copy);
                GC.KeepAlive(spacer);
            }
        }
        finally
        {
            stop.Cancel();
            churn.Join();
        }
        Assert.Equal(0, wrong);
        Assert.Equal(values, tensor.ToArray());
    }
}
