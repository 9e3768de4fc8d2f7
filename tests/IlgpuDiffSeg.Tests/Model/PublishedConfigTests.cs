using System.Text.Json.Nodes;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Model;

/// <summary>
/// The UNet built from each published checkpoint's flags has exactly the checkpoint's state_dict: same keys, same
/// shapes, same order. Expected lists: tests/fixtures/adm-inventories.json, from tests/generators/make_adm_fixtures.py.
/// </summary>
public sealed class PublishedConfigTests
{
    static readonly JsonObject Inventory =
        JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "tests", "fixtures", "adm-inventories.json")))!.AsObject();

    public static TheoryData<string> Names() => new(Inventory.Select(kv => kv.Key));

    [Theory]
    [MemberData(nameof(Names))]
    public void StateDictMatches(string name)
    {
        var entry = Inventory[name]!.AsObject();
        var flags = AdmFlags.FromJson(entry["flags"]!.AsObject().DeepClone().AsObject(), name);
        var model = new UNetModel(flags);
        var expected = entry["keys"]!.AsArray().Select(k => (k![0]!.GetValue<string>(),
            string.Join(",", k[1]!.AsArray().Select(d => d!.GetValue<int>())))).ToList();
        var actual = model.Parameters().Select(p => (p.Name, string.Join(",", p.Shape))).ToList();
        Assert.Equal(expected, actual);
        Assert.Equal(entry["parameters"]!.GetValue<long>(), model.ParameterCount);
    }

    [Fact]
    public void LsunBedroomHasTheDocumentedSize()
    {
        // docs/method.md, The ADM UNet: 566 tensors, 552,814,086 parameters; decoder blocks 5,6,7,8,12 give 2816 channels per step.
        var model = new UNetModel(AdmFlags.Parse("""
            {"attention_resolutions": "32,16,8", "class_cond": false, "diffusion_steps": 1000, "dropout": 0.1,
             "image_size": 256, "learn_sigma": true, "noise_schedule": "linear", "num_channels": 256,
             "num_head_channels": 64, "num_res_blocks": 2, "resblock_updown": true, "use_fp16": true,
             "use_scale_shift_norm": true}
            """, "lsun"));
        Assert.Equal(566, model.Parameters().Count());
        Assert.Equal(552_814_086, model.ParameterCount);
        int[] blocks = [5, 6, 7, 8, 12];
        Assert.Equal(2816, blocks.Sum(b => model.OutputBlocks[b].Channels));
        Assert.Equal([8, 8, 8, 4, 2], blocks.Select(b => model.OutputBlocks[b].Downsample));
    }
}
