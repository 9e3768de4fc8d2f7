// HostLaunch — an ILGPU kernel method run as host code. An implicitly grouped kernel is a static method (Index1D index,
// args…) that ILGPU's CPU accelerator would run once per simulated GPU thread, each a thread of its own synchronised with
// the others; the CPU backend instead calls the same method from the thread pool, one call per index, so the kernel's own
// code — the same bits — runs at JIT speed, without the simulation's per-thread cost. Grid-stride kernels launch few,
// busy indices (ComputeDevice.StrideThreads), so a call is a long loop. Explicitly grouped kernels (shared memory, barriers,
// warp shuffles) cannot run this way and stay on the accelerator.
using System.Linq.Expressions;
using System.Reflection;
using ILGPU;

namespace IlgpuDiffSeg.Kernels;

static class HostLaunch
{
    /// <summary>
    /// A launcher of type <typeparamref name="T"/> — what LoadAutoGroupedStreamKernel returns: (Index1D extent, args…) —
    /// that runs <paramref name="kernel"/> for every index of the extent on the thread pool, after the device's queued work.
    /// Null when the kernel is not an implicitly grouped one (its first parameter is not an Index1D).
    /// </summary>
    public static T? Create<T>(ComputeDevice dev, Delegate kernel) where T : Delegate
    {
        var invoke = typeof(T).GetMethod("Invoke")!;
        var launchParameters = invoke.GetParameters();
        var kernelParameters = kernel.Method.GetParameters();
        if (launchParameters.Length == 0 || launchParameters[0].ParameterType != typeof(Index1D) ||
            kernelParameters.Length != launchParameters.Length || kernelParameters[0].ParameterType != typeof(Index1D))
        {
            return null;
        }
        // (extent, a1, …, an) => HostLaunch.Run(dev, extent, (int i) => kernel(new Index1D(i), a1, …, an))
        var parameters = launchParameters.Select(p => Expression.Parameter(p.ParameterType, p.Name)).ToArray();
        var i = Expression.Parameter(typeof(int), "i");
        var index = Expression.New(typeof(Index1D).GetConstructor([typeof(int)])!, i);
        var call = Expression.Invoke(Expression.Constant(kernel), [index, .. parameters.Skip(1)]);
        var body = Expression.Lambda<Action<int>>(call, i);
        var run = typeof(HostLaunch).GetMethod(nameof(Run), BindingFlags.Static | BindingFlags.NonPublic)!;
        var launch = Expression.Call(run, Expression.Constant(dev), parameters[0], body);
        return Expression.Lambda<T>(launch, parameters).Compile();
    }

    static void Run(ComputeDevice dev, Index1D extent, Action<int> body)
    {
        dev.Synchronize();
        if (extent.Size == 1)
        {
            body(0);
            return;
        }
        Parallel.For(0, extent.Size, body);
    }
}
