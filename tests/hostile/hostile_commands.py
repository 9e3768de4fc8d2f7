"""The hostile-input cases of the newer commands, train-ddpm, loss, sample, synthesize and export (issue #13's second
round), built by make_hostile.py beside its own: command_cases(globals()) returns one function per command, each
adding its cases with make_hostile's add(). Every case runs the tiny models of tests/fixtures (the 32x32 adm-tiny UNet,
the 16x16 class-conditional guidance pair) with one or two steps, so each takes seconds on a CPU.
"""
import json
import os
import shutil
import struct

import numpy as np

from hostile_formats import npy, png, png_gray, png_rgb, st_bytes, st_read, zeros_z


def command_cases(g):
    add, write, run, mutate = g["add"], g["write"], g["run"], g["mutate_bytes_r"]
    DIFFSEG, BASE, TINY, REPO = g["DIFFSEG"], g["BASE"], g["TINY"], g["REPO"]
    QUICK = g["QUICK"]
    flags = os.path.join(TINY, "flags.json")
    tiny = os.path.join(BASE, "tiny.safetensors")
    guide = os.path.join(REPO, "tests", "fixtures", "guidance", "adaptive-pool-classcond")
    gmodel, clf = os.path.join(BASE, "gmodel.safetensors"), os.path.join(BASE, "classifier.safetensors")
    rundir = os.path.join(BASE, "run")
    cpu = ["--device", "cpu"]

    def setup_commands():
        if not os.path.exists(gmodel):
            run([DIFFSEG, "convert", os.path.join(guide, "model.pt"), "--flags", os.path.join(guide, "flags.json"), "-o", gmodel])
        if not os.path.exists(clf):
            run([DIFFSEG, "convert", os.path.join(guide, "classifier.pt"), "--flags", os.path.join(guide, "classifier_flags.json"),
                 "-o", clf])
        if not os.path.exists(os.path.join(rundir, "model000001.safetensors")):
            run([DIFFSEG, "train-ddpm", "--flags", flags, "--data-dir", os.path.join(BASE, "train"), "-o", rundir, "--max-steps", "1",
                 "--save-interval", "1"] + cpu)

    def flags_with(d, **over):
        f = json.load(open(flags))
        f.update(over)
        path = os.path.join(d, "flags.json")
        with open(path, "w") as out:
            json.dump(f, out)
        return path

    def arr(a):
        a = np.asarray(a)
        return npy(descr=a.dtype.str if a.dtype != bool else "|b1", shape=a.shape, data=a.tobytes())

    # ------------------------------------------------------------ train-ddpm
    def train_ddpm_cases():
        setup_commands()
        K = "train-ddpm"
        pngs = sorted(f for f in os.listdir(os.path.join(BASE, "train")) if f.endswith(".png"))

        def td(note, setup=None, names=("data",), args=(), data=True, resume=False, flags_over=None, base=None):
            def s(d):
                if data:
                    os.makedirs(os.path.join(d, "data"))
                    for f in pngs:
                        shutil.copy(os.path.join(BASE, "train", f), os.path.join(d, "data", f))
                if resume:
                    shutil.copytree(rundir, os.path.join(d, "rundir"))
                if flags_over is not None:
                    flags_with(d, **flags_over)
                if setup:
                    setup(d)
            # A resumed run reads the data folder it was made with (the folder is part of the run's fingerprint).
            cmd = base or [DIFFSEG, "train-ddpm", "--flags", "{D}/flags.json" if flags_over is not None else flags, "--data-dir",
                           os.path.join(BASE, "train") if resume else "{D}/data", "-o", "{D}/rundir", "--max-steps",
                           "2" if resume else "1", "--save-interval", "1"]
            add(K, note, cmd + list(args) + cpu, list(names), s)

        def img(name, b):
            return lambda d: write(os.path.join(d, "data", name), b)

        td("baseline (must run)")
        td("data folder empty", lambda d: [os.remove(os.path.join(d, "data", f)) for f in pngs])
        td("data folder missing", data=False)
        td("data folder is a file", lambda d: write(os.path.join(d, "data"), b"x"), data=False)
        td("only non-image files", lambda d: [os.rename(os.path.join(d, "data", f), os.path.join(d, "data", f + ".txt")) for f in pngs])
        td("non-image files beside the images (must run)", lambda d: (write(os.path.join(d, "data", "notes.txt"), b"hi"),
                                                                     np.save(os.path.join(d, "data", "m.npy"), np.zeros(3))))
        td("a folder named x.png inside (must run or refuse)", lambda d: os.makedirs(os.path.join(d, "data", "x.png")), ["x.png"])
        td("symlink loop inside the data folder", lambda d: os.symlink(os.path.join(d, "data"), os.path.join(d, "data", "loop")),
           ["data", "loop"])
        td("dangling symlink named a.png", lambda d: os.symlink("/nonexistent/a.png", os.path.join(d, "data", "a.png")), ["a.png"])
        r = np.random.RandomState(9)
        for note, b in [("48x32 (must run)", png_rgb((r.rand(32, 48, 3) * 255).astype(np.uint8))),
                        ("64x64 (must run)", png_rgb((r.rand(64, 64, 3) * 255).astype(np.uint8))),
                        ("16x16, upscaled (must run)", png_rgb((r.rand(16, 16, 3) * 255).astype(np.uint8))),
                        ("1x1 (must run)", png_rgb(np.zeros((1, 1, 3), np.uint8))),
                        ("gray 8-bit (must run)", png_gray((r.rand(40, 40) * 255).astype(np.uint8))),
                        ("gray 16-bit (must run)", png_gray((r.rand(40, 40) * 65535).astype(np.uint16), 16)),
                        ("RGBA (must run)", png(32, 32, bytes(32 * 32 * 4), 6, 8))]:
            td("mixed sizes: an image " + note, img("mixed.png", b), ["mixed.png"])
        td("a 1x65535 strip", img("strip.png", png(65535, 1, color_type=0, idat=zeros_z(65536))), ["strip.png"])
        td("a 20000x20000 image (~400 KB)", img("huge.png", png(20000, 20000, color_type=0, idat=zeros_z(20001 * 20000))), ["huge.png"])
        td("IHDR 2^31 x 2^31", img("huge.png", png(1, 1, ihdr=struct.pack(">IIBBBBB", 1 << 31, 1 << 31, 8, 2, 0, 0, 0),
                                                   idat=b"x")), ["huge.png"])
        good = open(os.path.join(BASE, "train", pngs[0]), "rb").read()
        for note, b in [("empty", b""), ("text named .png", b"not an image"), ("truncated", good[:len(good) // 2]),
                        ("IDAT not zlib", png(32, 32, idat=b"garbage" * 9)), ("signature only", good[:8]),
                        ("IDAT cut short", png(32, 32, idat=zeros_z(3104)[:12]))]:
            td("an image " + note, img("bad.png", b), ["bad.png"])
        td("a JPEG that is text", img("bad.jpg", b"\xff\xd8 nope"), ["bad.jpg"])
        td("a GIF header only", img("bad.gif", b"GIF89a\x20\x00\x20\x00\x00\x00\x00"), ["bad.gif"])
        for k in range(4 if QUICK else 12):
            td(f"random mutation of an image #{k}", img("mut.png", mutate(good, lo=8)), ["mut.png"])
        # the options
        for note, args, names in [
            ("--batch-size 0", ["--batch-size", "0"], ["--batch-size"]), ("--batch-size -1", ["--batch-size", "-1"], ["--batch-size"]),
            ("--batch-size 2^31", ["--batch-size", "2147483648"], ["--batch-size"]),
            ("--batch-size 2^31-1", ["--batch-size", "2147483647"], ["--batch-size", "data"]),
            ("--batch-size 100000", ["--batch-size", "100000"], ["--batch-size", "data"]),
            ("--batch-size 5 of 4 images", ["--batch-size", "5"], ["--batch-size", "data"]),
            ("--microbatch 0", ["--microbatch", "0"], ["--microbatch"]), ("--microbatch 2 of 1", ["--microbatch", "2"], ["--microbatch"]),
            ("--lr NaN", ["--lr", "NaN"], ["--lr"]), ("--lr -1", ["--lr", "-1"], ["--lr"]), ("--lr Infinity", ["--lr", "Infinity"], ["--lr"]),
            ("--lr 0", ["--lr", "0"], ["--lr"]), ("--lr abc", ["--lr", "abc"], ["--lr"]), ("--lr 1e308 (must run or refuse)",
                                                                                         ["--lr", "1e308"], ["--lr"]),
            ("--ema-rate 1.5", ["--ema-rate", "1.5"], ["--ema-rate"]), ("--ema-rate 1", ["--ema-rate", "1"], ["--ema-rate"]),
            ("--ema-rate 0.9,abc", ["--ema-rate", "0.9,abc"], ["--ema-rate"]), ("--ema-rate empty", ["--ema-rate", ""], ["--ema-rate"]),
            ("--ema-rate NaN", ["--ema-rate", "NaN"], ["--ema-rate"]), ("--ema-rate 0.9,0.9", ["--ema-rate", "0.9,0.9"], ["--ema-rate"]),
            ("--ema-rate 1e-400", ["--ema-rate", "1e-400"], ["--ema-rate"]),
            ("--ema-rate of 10^4 rates", ["--ema-rate", ",".join(["0.5"] * 10000)], ["--ema-rate"]),
            ("--max-steps -1", ["--max-steps", "-1"], ["--max-steps"]), ("--max-steps 0", ["--max-steps", "0"], ["--max-steps"]),
            ("--max-steps 2^63", ["--max-steps", "9223372036854775808"], ["--max-steps"]),
            ("--save-interval 0", ["--save-interval", "0"], ["--save-interval"]),
            ("--save-interval -5", ["--save-interval", "-5"], ["--save-interval"]),
            ("--log-interval 0", ["--log-interval", "0"], ["--log-interval"]),
            ("--weight-decay NaN", ["--weight-decay", "NaN"], ["--weight-decay"]),
            ("--weight-decay -1", ["--weight-decay", "-1"], ["--weight-decay"]),
            ("--lr-anneal-steps -3", ["--lr-anneal-steps", "-3"], ["--lr-anneal-steps"]),
            ("--schedule-sampler bogus", ["--schedule-sampler", "bogus"], ["--schedule-sampler"]),
            ("--seed -1 (must run)", ["--seed", "-1"], ["--seed"]), ("--seed 2^31", ["--seed", "2147483648"], ["--seed"]),
            ("--precision fp8", ["--precision", "fp8"], ["--precision"]),
            ("--super-res with plain flags", ["--super-res"], ["flags.json", "--super-res"]),
            ("--synthetic-scenes and --data-dir", ["--synthetic-scenes"], ["--data-dir", "--synthetic-scenes"]),
        ]:
            td(note, args=args, names=names)
        td("neither --data-dir nor --synthetic-scenes", names=["--data-dir"],
           base=[DIFFSEG, "train-ddpm", "--flags", flags, "-o", "{D}/rundir", "--max-steps", "1"])
        td("--synthetic-scenes --batch-size 100000", names=["--batch-size"],
           base=[DIFFSEG, "train-ddpm", "--flags", flags, "--synthetic-scenes", "-o", "{D}/rundir", "--max-steps", "1",
                 "--batch-size", "100000"])
        td("--synthetic-scenes --microbatch 1 --batch-size 2^31-1", names=["--batch-size"],
           base=[DIFFSEG, "train-ddpm", "--flags", flags, "--synthetic-scenes", "-o", "{D}/rundir", "--max-steps", "1",
                 "--batch-size", "2147483647", "--microbatch", "1"])
        # flags
        for note, over in [("image_size 0", {"image_size": 0}), ("image_size -32", {"image_size": -32}),
                           ("image_size 2^20", {"image_size": 1 << 20}), ("image_size 65536", {"image_size": 65536}),
                           ("num_channels 2^30", {"num_channels": 1 << 30}), ("diffusion_steps 0", {"diffusion_steps": 0}),
                           ("diffusion_steps 2^31", {"diffusion_steps": 1 << 31}), ("diffusion_steps 10^8", {"diffusion_steps": 10 ** 8}),
                           ("timestep_respacing ddim49", {"timestep_respacing": "ddim49"}), ("noise_schedule bogus", {"noise_schedule": "x"}),
                           ("class_cond true (must run)", {"class_cond": True}), ("learn_sigma false (must run)", {"learn_sigma": False})]:
            td("flags " + note, flags_over=over, names=["flags.json"])
        # --init
        init = ["--init", "{D}/init.safetensors"]
        tb = open(tiny, "rb").read()
        td("--init baseline (must run)", lambda d: write(os.path.join(d, "init.safetensors"), tb), ["init.safetensors"], init)
        td("--init missing", names=["init.safetensors"], args=init)
        td("--init empty", lambda d: write(os.path.join(d, "init.safetensors"), b""), ["init.safetensors"], init)
        td("--init truncated", lambda d: write(os.path.join(d, "init.safetensors"), tb[:len(tb) // 2]), ["init.safetensors"], init)
        td("--init is a folder", lambda d: os.makedirs(os.path.join(d, "init.safetensors")), ["init.safetensors"], init)
        td("--init is a .pt", names=["model.pt"], args=["--init", os.path.join(TINY, "model.pt")])
        td("--init is a classifier", names=["classifier.safetensors", "flags"], args=["--init", clf])
        td("--init is an ensemble", names=["ensemble.safetensors"],
           args=["--init", os.path.join(BASE, "exp", "50_150_2_5_7", "ensemble.safetensors")])
        for note, over in [("num_channels 64", {"num_channels": 64}), ("learn_sigma false", {"learn_sigma": False}),
                           ("class_cond true", {"class_cond": True}), ("image_size 64 (must run: sizes may differ?)", {"image_size": 64}),
                           ("attention_resolutions 8", {"attention_resolutions": "8"}),
                           ("diffusion_steps 500 (model same; must run or refuse)", {"diffusion_steps": 500})]:
            td("--init whose flags disagree: " + note, lambda d: write(os.path.join(d, "init.safetensors"), tb),
               ["init.safetensors", "flags.json"], init, flags_over=over)
        for k in range(3 if QUICK else 8):
            td(f"--init random mutation of the header #{k}",
               lambda d, k=k: write(os.path.join(d, "init.safetensors"), mutate(tb[:3000], lo=8) + tb[3000:]), ["init.safetensors"], init)
        # an existing RUN_DIR
        rd = ["rundir"]
        td("resume (must run)", resume=True)
        td("resume with another --lr", resume=True, names=rd, args=["--lr", "2e-4"])
        td("resume with other flags", resume=True, names=rd + ["flags.json"], flags_over={"num_channels": 16})
        td("resume with another --ema-rate", resume=True, names=rd, args=["--ema-rate", "0.99"])
        td("resume with --max-steps below the saved step (must run or refuse)", resume=True, names=rd,
           base=[DIFFSEG, "train-ddpm", "--flags", flags, "--data-dir", os.path.join(BASE, "train"), "-o", "{D}/rundir", "--max-steps",
                 "1"])
        files = {f: open(os.path.join(rundir, f), "rb").read() for f in os.listdir(rundir)}
        ck = [f for f in files if f.endswith(".safetensors")]
        for f in ck:
            b = files[f]
            td(f"resume: {f} truncated", lambda d, f=f, b=b: write(os.path.join(d, "rundir", f), b[:len(b) // 2]), rd + [f], resume=True)
            td(f"resume: {f} empty", lambda d, f=f: write(os.path.join(d, "rundir", f), b""), rd + [f], resume=True)
            td(f"resume: {f} missing", lambda d, f=f: os.remove(os.path.join(d, "rundir", f)), rd + [f], resume=True)
            for k in range(2 if QUICK else 5):
                td(f"resume: {f} header mutation #{k}",
                   lambda d, f=f, b=b, k=k: write(os.path.join(d, "rundir", f), mutate(b[:2500], lo=8) + b[2500:]), rd + [f], resume=True)

            def meta(key, value, f=f):
                def s(d):
                    h, data = st_read(os.path.join(rundir, f))
                    if value is None:
                        h["__metadata__"].pop(key, None)
                    else:
                        h["__metadata__"][key] = value
                    write(os.path.join(d, "rundir", f), st_bytes(h, data))
                return s
            if f.startswith("opt"):
                for key, value in [("lg_loss_scale", "abc"), ("lg_loss_scale", "NaN"), ("adam_steps", "abc"), ("adam_steps", "-5"),
                                   ("sampler", "{nope"), ("sampler", '{"kind": 3}'), ("format", "other"), ("step", "abc"),
                                   ("adam_steps", None), ("lg_loss_scale", "1e400")]:
                    td(f"resume: {f} metadata {key} = {value!r}", meta(key, value), rd + [f], resume=True)
            else:
                for key, value in [("training", "{}"), ("training", None), ("step", "abc"), ("step", "99")]:
                    td(f"resume: {f} metadata {key} = {value!r}", meta(key, value), rd + [f], resume=True)

            def nan_weights(d, f=f):
                h, data = st_read(os.path.join(rundir, f))
                write(os.path.join(d, "rundir", f), st_bytes(h, np.full(len(data) // 4, np.nan, "<f4").tobytes()))
            td(f"resume: {f} all NaN", nan_weights, rd + [f], resume=True)
        td("resume: progress.csv garbage rows", lambda d: write(os.path.join(d, "rundir", "progress.csv"),
                                                                 b"step,samples\n1,abc,def\nzz\n" + b"1," * 30 + b"\n"),
           rd + ["progress.csv"], resume=True)
        td("resume: progress.csv a row of NaN and huge numbers (must run)",
           lambda d: write(os.path.join(d, "rundir", "progress.csv"), files["progress.csv"].splitlines()[0] + b"\n" +
                           b",".join([b"1", b"99999999999999999999999"] + [b"NaN"] * 21) + b"\n"), rd + ["progress.csv"], resume=True)
        td("resume: progress.csv a row with a step of 10^30", lambda d: write(os.path.join(d, "rundir", "progress.csv"),
                                                                               files["progress.csv"].splitlines()[0] + b"\n" +
                                                                               b",".join([b"1" + b"0" * 30] + [b"1"] * 22) + b"\n"),
           rd + ["progress.csv"], resume=True)
        td("resume: progress.csv is a folder", lambda d: (os.remove(os.path.join(d, "rundir", "progress.csv")),
                                                           os.makedirs(os.path.join(d, "rundir", "progress.csv"))),
           rd + ["progress.csv"], resume=True)
        td("resume: model file with a 25-digit step", lambda d: shutil.copy(os.path.join(rundir, "model000001.safetensors"),
                                                                         os.path.join(d, "rundir", "model" + "9" * 25 + ".safetensors")),
           rd + ["model999"], resume=True)
        td("resume: model000002 that is a folder", lambda d: os.makedirs(os.path.join(d, "rundir", "model000002.safetensors")),
           rd + ["model000002"], resume=True)
        td("resume: a model file from another run's step 5", lambda d: shutil.copy(os.path.join(rundir, "model000001.safetensors"),
                                                                                os.path.join(d, "rundir", "model000005.safetensors")),
           rd + ["000005"], resume=True)
        td("-o is a file", lambda d: write(os.path.join(d, "rundir"), b"x"), rd)
        td("-o under a file", lambda d: write(os.path.join(d, "afile"), b"x"), ["afile"],
           base=[DIFFSEG, "train-ddpm", "--flags", flags, "--data-dir", "{D}/data", "-o", "{D}/afile/run", "--max-steps", "1"])
        td("loss.png is a folder in the run dir (log every step)", lambda d: os.makedirs(os.path.join(d, "rundir", "loss.png")),
           rd + ["loss.png"], ["--log-interval", "1"])

    # ------------------------------------------------------------ loss
    def loss_cases():
        setup_commands()
        K = "loss"
        src = os.path.join(TINY, "train")
        x0, eps, t0 = (np.load(os.path.join(src, f)) for f in ("x_start.npy", "noise.npy", "t.npy"))

        def ls(note, names, x=None, t=None, noise=None, y=None, model=None, out=True, setup=None, extra=()):
            def s(d):
                for name, v, dflt in (("x.npy", x, x0), ("t.npy", t, t0), ("noise.npy", noise, eps)):
                    write(os.path.join(d, name), v if isinstance(v, bytes) else arr(dflt if v is None else v))
                if y is not None:
                    write(os.path.join(d, "y.npy"), y if isinstance(y, bytes) else arr(y))
                if setup:
                    setup(d)
            cmd = [DIFFSEG, "loss", "--model", model or tiny, "--x", "{D}/x.npy", "--t", "{D}/t.npy", "--noise", "{D}/noise.npy"]
            cmd += ["--y", "{D}/y.npy"] if y is not None else []
            cmd += ["-o", "{D}/grads.safetensors"] if out else []
            add(K, note, cmd + list(extra) + cpu, names, s)

        X, T, N, Y = ["x.npy"], ["t.npy"], ["noise.npy"], ["y.npy"]
        ls("baseline (must run)", [])
        ls("x (3, 3, 31, 31)", X, x=x0[:, :, :31, :31], noise=eps[:, :, :31, :31])
        ls("x (3, 3, 16, 16) (must run or refuse)", X, x=x0[:, :, :16, :16], noise=eps[:, :, :16, :16])
        ls("x (3, 3, 64, 64) (must run or refuse)", X, x=np.tile(x0, (1, 1, 2, 2)), noise=np.tile(eps, (1, 1, 2, 2)))
        ls("x (3, 3, 4, 4)", X, x=x0[:, :, :4, :4], noise=eps[:, :, :4, :4])
        ls("x (3, 3, 2, 2)", X, x=x0[:, :, :2, :2], noise=eps[:, :, :2, :2])
        ls("x (3, 3, 32, 48)", X, x=np.concatenate([x0, x0[:, :, :, :16]], 3), noise=np.concatenate([eps, eps[:, :, :, :16]], 3))
        ls("x (3, 4, 32, 32)", X, x=np.concatenate([x0, x0[:, :1]], 1), noise=np.concatenate([eps, eps[:, :1]], 1))
        ls("x (3, 3, 32)", X, x=x0[:, :, 0])
        ls("x (0, 3, 32, 32)", X, x=x0[:0], noise=eps[:0], t=t0[:0])
        ls("x 1-d", X, x=x0.ravel())
        ls("x int64", X, x=x0.astype(np.int64))
        ls("x bool", X, x=x0 > 0)
        ls("x float16 (must run)", X, x=x0.astype(np.float16))
        ls("x NaN", X, x=np.where(np.arange(x0.size).reshape(x0.shape) == 9, np.nan, x0).astype(np.float32))
        ls("x 1e30", X, x=np.full(x0.shape, 1e30, np.float32))
        ls("x batch 2^31 declared", X, x=npy(shape=(1 << 31, 3, 32, 32), data=x0.tobytes()))
        ls("x batch 100000 declared, data short", X, x=npy(shape=(100000, 3, 32, 32), data=x0.tobytes()))
        ls("noise (2, 3, 32, 32)", N, noise=eps[:2])
        ls("noise (3, 3, 32, 31)", N, noise=eps[:, :, :, :31])
        ls("noise NaN", N, noise=np.full(eps.shape, np.nan, np.float32))
        ls("noise int32", N, noise=eps.astype(np.int32))
        ls("noise empty file", N, noise=b"")
        ls("t of 2", T, t=t0[:2])
        ls("t (3, 1)", T, t=t0[:, None])
        ls("t 0-d", T, t=np.int64(5))
        ls("t float 1.5", T, t=np.array([1.5, 2, 3]))
        ls("t float integral (must run or refuse)", T, t=t0.astype(np.float64))
        ls("t float NaN", T, t=np.array([np.nan, 2, 3]))
        ls("t 1000", T, t=np.array([1000, 2, 3]))
        ls("t -1", T, t=np.array([-1, 2, 3]))
        ls("t 2^40", T, t=np.array([1 << 40, 2, 3]))
        ls("t 2^63-1", T, t=np.array([(1 << 63) - 1, 2, 3]))
        ls("t uint64 2^64-1", T, t=np.array([(1 << 64) - 1, 2, 3], np.uint64))
        ls("t int8 (must run)", T, t=t0.astype(np.int8) % 100)
        ls("t bool", T, t=np.array([True, False, True]))
        ls("t unicode", T, t=np.array(["a", "b", "c"]))
        ls("y for an unconditional model", Y + ["tiny.safetensors"], y=np.array([0, 1, 2]))
        g16 = np.random.RandomState(0).rand(3, 3, 16, 16).astype(np.float32) * 2 - 1
        gt = np.array([1, 3, 5])  # its flags respace 200 steps to 6
        ls("class-conditional model without y", ["gmodel.safetensors", "--y"], x=g16, noise=g16, t=gt, model=gmodel)
        ls("class-conditional baseline (must run)", [], x=g16, noise=g16, t=gt, y=np.array([0, 1, 999]), model=gmodel)
        ls("class-conditional t 6 of 6", T, x=g16, noise=g16, t=np.array([1, 3, 6]), y=np.array([0, 1, 2]), model=gmodel)
        for note, yv in [("y 1000 of 1000 classes", np.array([0, 1, 1000])), ("y -1", np.array([-1, 1, 2])),
                         ("y 2^40", np.array([1 << 40, 1, 2])), ("y float 0.5", np.array([0.5, 1, 2])), ("y of 2", np.array([0, 1])),
                         ("y (3, 1)", np.array([[0], [1], [2]])), ("y NaN", np.array([np.nan, 1, 2])), ("y empty file", b""),
                         ("y uint8 (must run)", np.array([0, 1, 2], np.uint8))]:
            ls(note, Y, x=g16, noise=g16, t=gt, y=yv, model=gmodel)
        ls("model missing", ["nope.safetensors"], model="/nonexistent/nope.safetensors")
        ls("model is a .pt", ["model.pt"], model=os.path.join(TINY, "model.pt"))
        ls("model is a classifier", ["classifier.safetensors"], model=clf)
        ls("model is an ensemble", ["ensemble.safetensors"], model=os.path.join(BASE, "exp", "50_150_2_5_7", "ensemble.safetensors"))
        tb = open(tiny, "rb").read()
        for k in range(3 if QUICK else 8):
            ls(f"model header mutation #{k}", ["m.safetensors"], model="{D}/m.safetensors",
               setup=lambda d, k=k: write(os.path.join(d, "m.safetensors"), mutate(tb[:3000], lo=8) + tb[3000:]))
        ls("model truncated", ["m.safetensors"], model="{D}/m.safetensors",
           setup=lambda d: write(os.path.join(d, "m.safetensors"), tb[:len(tb) - 1000]))

        def nan_model(d):
            h, data = st_read(tiny)
            write(os.path.join(d, "m.safetensors"), st_bytes(h, np.full(len(data) // 4, np.nan, "<f4").tobytes()))
        ls("model weights all NaN", ["m.safetensors"], model="{D}/m.safetensors", setup=nan_model)
        ls("-o is a folder", ["grads.safetensors"], setup=lambda d: os.makedirs(os.path.join(d, "grads.safetensors")))
        ls("-o in a missing folder", ["nope"], out=False, extra=["-o", "{D}/nope/grads.safetensors"])
        ls("-o is --x", ["x.npy"], out=False, extra=["-o", "{D}/x.npy"])

    # ------------------------------------------------------------ sample
    def sample_cases():
        setup_commands()
        K = "sample"

        def sm(note, names, args=(), model=None, setup=None, out="{D}/s.npz", defaults=True):
            cmd = [DIFFSEG, "sample", "--model", model or tiny, "-o", out]
            if defaults:
                cmd += [w for k, v in (("--num-samples", "1"), ("--batch-size", "1"), ("--timestep-respacing", "2"))
                        if k not in args for w in (k, v)]
            add(K, note, cmd + list(args) + cpu, names, setup)

        R = ["--timestep-respacing"]
        sm("baseline (must run)", [])
        sm("ddim2 (must run)", [], ["--timestep-respacing", "ddim2", "--use-ddim"])
        for spec in ["ddim49", "ddim0", "ddim", "ddim-1", "ddim1001", "ddim1e3", "0", "-1", "1001", "600,600", "2,0", "abc",
                     ",", "2,", ",2", " 2", "2 ", "1e3", "2.5", "99999999999999999999", "2/3", "\u0662", "ddim\u0662", "+2", "0x10",
                     ",".join(["1"] * 1001), ",".join(["1"] * 30000)]:
            sm(f"--timestep-respacing {spec[:40]!r}", R, ["--timestep-respacing", spec])
        sm("--timestep-respacing 1,1 (must run)", [], ["--timestep-respacing", "1,1"])
        # Every step of a schedule: the 16x16 model's 200 (the tiny model's 1000 take a minute on a busy CPU).
        sm("--timestep-respacing '' on a 200-step model (must run)", [], ["--timestep-respacing", "", "--class-labels", "{D}/y.npy"],
           model=gmodel, setup=lambda d: np.save(os.path.join(d, "y.npy"), np.array([1])))
        sm("--timestep-respacing ddim200 of 200 (must run)", [], ["--timestep-respacing", "ddim200", "--use-ddim", "--class-labels",
                                                                  "{D}/y.npy"], model=gmodel,
           setup=lambda d: np.save(os.path.join(d, "y.npy"), np.array([1])))
        for note, args, names in [("--num-samples 0", ["--num-samples", "0"], ["--num-samples"]),
                                  ("--num-samples -1", ["--num-samples", "-1"], ["--num-samples"]),
                                  ("--num-samples 2^31", ["--num-samples", "2147483648"], ["--num-samples"]),
                                  ("--num-samples 2^31-1 --batch-size 2^31-1",
                                   ["--num-samples", "2147483647", "--batch-size", "2147483647"], ["--num-samples", "--batch-size"]),
                                  ("--num-samples 100000 --batch-size 100000",
                                   ["--num-samples", "100000", "--batch-size", "100000"], ["--num-samples", "--batch-size"]),
                                  ("--num-samples 2^31-1 (whole npz in memory)", ["--num-samples", "2147483647"], ["--num-samples"]),
                                  ("--batch-size 0", ["--batch-size", "0"], ["--batch-size"]),
                                  ("--batch-size 64 of 1 (must run)", ["--batch-size", "64"], []),
                                  ("--eta NaN with DDIM", ["--eta", "NaN", "--use-ddim"], ["--eta"]),
                                  ("--eta Infinity with DDIM", ["--eta", "Infinity", "--use-ddim"], ["--eta"]),
                                  ("--eta -1 with DDIM", ["--eta", "-1", "--use-ddim"], ["--eta"]),
                                  ("--eta 0.5 without DDIM", ["--eta", "0.5"], ["--eta"]),
                                  ("--clip-denoised maybe", ["--clip-denoised", "maybe"], ["--clip-denoised"]),
                                  ("--seed 2^31", ["--seed", "2147483648"], ["--seed"]),
                                  ("--classifier-scale NaN", ["--classifier", clf, "--classifier-scale", "NaN"], ["--classifier", "classifier"]),
                                  ("--classifier that does not fit", ["--classifier", clf], ["classifier.safetensors"]),
                                  ("--classifier is the model", ["--classifier", tiny], ["tiny.safetensors"]),
                                  ("--classifier missing", ["--classifier", "{D}/nope.safetensors"], ["nope.safetensors"]),
                                  ("--classifier-scale without --classifier (must run or refuse)", ["--classifier-scale", "5"],
                                   ["--classifier-scale"]),
                                  ("--base-samples for a plain model", ["--base-samples", "{D}/s0.npz"], ["s0.npz", "tiny.safetensors"]),
                                  ("--class-labels for an unconditional model", ["--class-labels", "{D}/y.npy"],
                                   ["y.npy", "tiny.safetensors"]),
                                  ("-o in a missing folder", [], ["nope"]), ("-o is a folder", [], ["s.npz"]),
                                  ("--raw is -o", ["--raw", "{D}/s.npz"], ["s.npz", "--raw"]),
                                  ("--raw in a missing folder", ["--raw", "{D}/nope/raw.npy"], ["nope"]),
                                  ("--raw is the grid", ["--raw", "{D}/s.png"], ["s.png", "--raw"])]:
            def setup(d, note=note):
                if "--base-samples" in note:
                    np.savez(os.path.join(d, "s0.npz"), np.zeros((1, 16, 16, 3), np.uint8))
                if "--class-labels" in note:
                    np.save(os.path.join(d, "y.npy"), np.array([1]))
                if note == "-o is a folder":
                    os.makedirs(os.path.join(d, "s.npz"))
            out = "{D}/nope/s.npz" if note == "-o in a missing folder" else "{D}/s.npz"
            sm(note, names, args, setup=setup, out=out)
        sm("--model missing", ["nope.safetensors"], model="{D}/nope.safetensors")
        sm("--model is a .pt", ["model.pt"], model=os.path.join(TINY, "model.pt"))
        sm("--model is a classifier", ["classifier.safetensors"], model=clf)
        tb = open(tiny, "rb").read()
        for k in range(3 if QUICK else 8):
            sm(f"--model header mutation #{k}", ["m.safetensors"], model="{D}/m.safetensors",
               setup=lambda d, k=k: write(os.path.join(d, "m.safetensors"), mutate(tb[:3000], lo=8) + tb[3000:]))
        # recorded noise: (S+1, N, 3, H, W) = (3, 1, 3, 32, 32)
        z = np.random.RandomState(3).randn(3, 1, 3, 32, 32).astype(np.float32)
        for note, b in [("baseline (must run)", arr(z)), ("(2, 1, 3, 32, 32)", arr(z[:2])), ("(3, 2, 3, 32, 32)", arr(np.concatenate([z, z], 1))),
                        ("(3, 1, 3, 16, 16)", arr(z[..., :16, :16])), ("(3, 3, 32, 32)", arr(z[:, 0])),
                        ("NaN in x_T", arr(np.where(np.arange(z.size).reshape(z.shape) == 0, np.nan, z).astype(np.float32))),
                        ("int64", arr(z.astype(np.int64))), ("empty", b""), ("declared (2^31, 1, 3, 32, 32)",
                                                                          npy(shape=(1 << 31, 1, 3, 32, 32), data=z.tobytes())),
                        ("truncated", arr(z)[:-100]), ("float16 (must run)", arr(z.astype(np.float16)))]:
            sm(f"--noise {note}", ["noise.npy"], ["--noise", "{D}/noise.npy"], setup=lambda d, b=b: write(os.path.join(d, "noise.npy"), b))
        # class-conditional model and the classifier that fits it: 16x16, 200 steps respaced to 6
        gargs = ["--timestep-respacing", "2"]
        for note, labels, extra in [("baseline (must run)", np.array([3]), []),
                                    ("guided baseline (must run)", np.array([3]), ["--classifier", clf, "--classifier-scale", "4"]),
                                    ("labels 1000", np.array([1000]), []), ("labels -1", np.array([-1]), []),
                                    ("labels 2^40", np.array([1 << 40]), []), ("labels of 2 for 1 sample", np.array([1, 2]), []),
                                    ("labels float", np.array([1.5]), []), ("labels (1, 1)", np.array([[1]]), []),
                                    ("labels NaN", np.array([np.nan]), []), ("labels bool", np.array([True]), []),
                                    ("guided, labels 1000", np.array([1000]), ["--classifier", clf]),
                                    ("guided, --classifier-scale Infinity", np.array([1]), ["--classifier", clf, "--classifier-scale", "Infinity"]),
                                    ("guided, --classifier-scale NaN", np.array([1]), ["--classifier", clf, "--classifier-scale", "NaN"])]:
            def setup(d, labels=labels):
                np.save(os.path.join(d, "y.npy"), labels)
            names = ["y.npy"] if "labels" in note else ["--classifier-scale"]
            sm("class-conditional: " + note, names, gargs + ["--class-labels", "{D}/y.npy"] + extra, model=gmodel, setup=setup)
        cb = open(clf, "rb").read()
        for k in range(2 if QUICK else 6):
            sm(f"--classifier header mutation #{k}", ["c.safetensors"], gargs + ["--classifier", "{D}/c.safetensors"], model=gmodel,
               setup=lambda d, k=k: write(os.path.join(d, "c.safetensors"), mutate(cb[:1500], lo=8) + cb[1500:]))

    # ------------------------------------------------------------ synthesize
    def synthesize_cases():
        setup_commands()
        K = "synthesize"

        def sy(note, names, args=(), setup=None, cfg=None, defaults=True, text=None, ensemble=True, out="{D}/out"):
            def s(d):
                if text is not None:
                    write(os.path.join(d, "exp.json"), text)
                else:
                    c = g["base_config"](os.path.join(d, "exp"))
                    c.update(cfg or {})
                    write(os.path.join(d, "exp.json"), json.dumps(c).encode())
                if ensemble:
                    g["copy_exp"](d)
                if setup:
                    setup(d)
            cmd = [DIFFSEG, "synthesize", "--config", "{D}/exp.json", "-o", out]
            if defaults:
                cmd += [w for k, v in (("--num-samples", "2"), ("--batch-size", "1"), ("--timestep-respacing", "2"))
                        if k not in args for w in (k, v)]
            add(K, note, cmd + list(args) + cpu, names, s)

        sy("baseline (must run)", [])
        sy("shard 0/2 (must run)", [], ["--shard", "0/2"])
        for shard in ["3/2", "2/2", "0/0", "-1/2", "1/-2", "a/b", "1/2/3", "", "/", "0/", "/2", "2147483648/2147483649", " 0/1",
                      "0/2147483647 (must run: no batch of its own)", "\u0661/2"]:
            sy(f"--shard {shard}", ["--shard"], ["--shard", shard.split(" (")[0]])
        for note, args, names in [("--num-samples 0", ["--num-samples", "0"], ["--num-samples"]),
                                  ("--num-samples -5", ["--num-samples", "-5"], ["--num-samples"]),
                                  ("--batch-size 0", ["--batch-size", "0"], ["--batch-size"]),
                                  ("--batch-size 100000", ["--batch-size", "100000"], ["--batch-size"]),
                                  ("--num-samples 2^31-1 --batch-size 2^31-1",
                                   ["--num-samples", "2147483647", "--batch-size", "2147483647"], ["--num-samples", "--batch-size"]),
                                  ("--uncertainty-portion 1", ["--uncertainty-portion", "1"], ["--uncertainty-portion"]),
                                  ("--uncertainty-portion NaN", ["--uncertainty-portion", "NaN"], ["--uncertainty-portion"]),
                                  ("--uncertainty-portion -0.1", ["--uncertainty-portion", "-0.1"], ["--uncertainty-portion"]),
                                  ("--eta NaN with DDIM", ["--eta", "NaN", "--use-ddim"], ["--eta"]),
                                  ("--eta 0.5 without DDIM", ["--eta", "0.5"], ["--eta"]),
                                  ("--devices 0", ["--devices", "0"], ["--devices"]), ("--devices abc", ["--devices", "abc"], ["--devices"]),
                                  ("--devices 2 on the CPU", ["--devices", "2"], ["--devices"]),
                                  ("--devices all (must run)", ["--devices", "all"], []),
                                  ("--timestep-respacing ddim49", ["--timestep-respacing", "ddim49"], ["--timestep-respacing"]),
                                  ("--timestep-respacing abc", ["--timestep-respacing", "abc"], ["--timestep-respacing"]),
                                  ("--timestep-respacing 1001", ["--timestep-respacing", "1001"], ["--timestep-respacing"])]:
            sy(note, names, args)
        sy("--num-samples missing", ["--num-samples"], ["--batch-size", "1"], defaults=False)
        sy("config missing", ["exp.json"], setup=lambda d: os.remove(os.path.join(d, "exp.json")))
        for note, text in [("config empty", b""), ("config not JSON", b"{nope"), ("config a list", b"[1]"),
                           ("config invalid UTF-8", b'{"exp_dir": "\xff"}')]:
            sy(note, ["exp.json"], text=text, ensemble=False)
        cfgb = json.dumps(g["base_config"]("X")).encode()
        for k in range(3 if QUICK else 8):
            sy(f"config random mutation #{k}", ["exp.json"], setup=lambda d, k=k: write(
                os.path.join(d, "exp.json"), mutate(json.dumps(g["base_config"](os.path.join(d, "exp"))).encode())))
        del cfgb
        ens = ["ensemble.safetensors"]
        sy("no trained ensemble", ens, ensemble=False)
        sy("ensemble truncated", ens, setup=lambda d: (lambda p: write(p, open(p, "rb").read()[:-500]))(
            os.path.join(d, "exp", "50_150_2_5_7", "ensemble.safetensors")))
        sy("ensemble empty", ens, setup=lambda d: write(os.path.join(d, "exp", "50_150_2_5_7", "ensemble.safetensors"), b""))
        for note, over, names in [("model_path missing", {"model_path": "/nonexistent/m.safetensors"}, ["m.safetensors"]),
                                  ("model_path a classifier", {"model_path": clf}, ["classifier.safetensors", "exp.json"]),
                                  ("model_path class-conditional", {"model_path": gmodel}, ["gmodel.safetensors", "exp.json"]),
                                  ("dim [64, 64, 320]", {"dim": [64, 64, 320]}, ["exp.json", "ensemble.safetensors"]),
                                  ("number_class 6", {"number_class": 6}, ["exp.json", "ensemble.safetensors"]),
                                  ("steps [50, 250]", {"steps": [50, 250]}, ["exp.json", "ensemble.safetensors"]),
                                  ("model_num 5", {"model_num": 5}, ["exp.json", "ensemble.safetensors"])]:
            sy("config " + note, names, cfg=over)
        # -o and resuming
        sy("-o is a file", ["out"], setup=lambda d: write(os.path.join(d, "out"), b"x"))
        sy("-o under a file", ["afile"], setup=lambda d: write(os.path.join(d, "afile"), b"x"), out="{D}/afile/out")

        def prior(seed="0", mod=None):
            def s(d):
                run([DIFFSEG, "synthesize", "--config", os.path.join(d, "exp.json"), "-o", os.path.join(d, "out"), "--num-samples", "2",
                     "--batch-size", "1", "--timestep-respacing", "2", "--seed", seed, "--shard", "0/2"] + cpu)
                if mod:
                    mod(d)
            return s
        sy("resume, other seed", ["out", "synthesize.json", "--seed"], setup=prior("7"))
        sy("resume (must run)", [], setup=prior())
        man = lambda d: os.path.join(d, "out", "synthesize.json")
        sy("resume, manifest empty", ["synthesize.json"], setup=prior(mod=lambda d: write(man(d), b"")))
        sy("resume, manifest not JSON", ["synthesize.json"], setup=prior(mod=lambda d: write(man(d), b"{nope")))
        sy("resume, manifest a list", ["synthesize.json"], setup=prior(mod=lambda d: write(man(d), b"[1, 2]")))
        sy("resume, manifest num_samples a string", ["synthesize.json"], setup=prior(mod=lambda d: write(
            man(d), json.dumps(dict(json.load(open(man(d))), num_samples="2")).encode())))

        def batch_files(d):
            b = os.path.join(d, "out", "batches")
            return [os.path.join(b, f) for f in sorted(os.listdir(b))] if os.path.isdir(b) else []
        for note, fn in [("empty", lambda p: write(p, b"")), ("truncated", lambda p: write(p, open(p, "rb").read()[:-200])),
                         ("a folder", lambda p: (os.remove(p), os.makedirs(p))),
                         ("mutated", lambda p: write(p, mutate(open(p, "rb").read(), lo=4)))]:
            sy(f"resume, the finished batch {note}", ["batches", "000"], setup=prior(mod=lambda d, fn=fn: [fn(p) for p in batch_files(d)]))
        sy("resume, a stray file in batches/ (must run)", [], setup=prior(mod=lambda d: write(
            os.path.join(d, "out", "batches", "junk.txt"), b"x")))

    # ------------------------------------------------------------ export
    def export_cases():
        setup_commands()
        K = "export"
        tb = open(tiny, "rb").read()

        def ex(note, names, out="{D}/m.pt", args=(), setup=None, model="{D}/m.safetensors"):
            def s(d):
                write(os.path.join(d, "m.safetensors"), tb)
                if setup:
                    setup(d)
            add(K, note, [DIFFSEG, "export", model, "-o", out] + list(args), names, s)

        ex("baseline .pt (must run)", [])
        ex("baseline --flags-out (must run)", [], args=["--flags-out", "{D}/f.json"])
        ex("--half .safetensors (must run)", [], "{D}/h.safetensors", ["--half"])
        ex("--source .safetensors (must run)", [], "{D}/h.safetensors", ["--source", "x"])
        ex("--half with .pt", ["m.pt", "--half"], args=["--half"])
        ex("--source with .pt", ["m.pt", "--source"], args=["--source", "x"])
        ex("--half with no extension", ["m", "--half"], "{D}/m", ["--half"])
        ex("output an existing folder", ["outdir"], "{D}/outdir", setup=lambda d: os.makedirs(os.path.join(d, "outdir")))
        ex("output an existing folder with a trailing slash", ["outdir"], "{D}/outdir/", setup=lambda d: os.makedirs(os.path.join(d, "outdir")))
        ex("output in a missing folder", ["nope"], "{D}/nope/m.pt")
        ex("output under a file", ["afile"], "{D}/afile/m.pt", setup=lambda d: write(os.path.join(d, "afile"), b"x"))
        ex("output is the input", ["m.safetensors"], "{D}/m.safetensors")
        ex("output is the input via ./", ["m.safetensors"], "{D}/./m.safetensors")
        ex("--half output is the input", ["m.safetensors"], "{D}/m.safetensors", ["--half"])
        ex("--flags-out is the output", ["m.pt"], args=["--flags-out", "{D}/m.pt"])
        ex("--flags-out is the input", ["m.safetensors"], args=["--flags-out", "{D}/m.safetensors"])
        ex("--flags-out in a missing folder", ["nope"], args=["--flags-out", "{D}/nope/f.json"])
        ex("--flags-out an existing folder", ["fdir"], args=["--flags-out", "{D}/fdir"], setup=lambda d: os.makedirs(os.path.join(d, "fdir")))
        # (never a real device here: a diffseg without the check renamed its output over /dev/full)
        ex("output in /proc/self", ["/proc/self/m.pt"], "/proc/self/m.pt")
        ex("input missing", ["nope.safetensors"], model="{D}/nope.safetensors")
        ex("input a folder", ["dir.safetensors"], model="{D}/dir.safetensors", setup=lambda d: os.makedirs(os.path.join(d, "dir.safetensors")))
        ex("input empty", ["m.safetensors"], setup=lambda d: write(os.path.join(d, "m.safetensors"), b""))
        ex("input truncated", ["m.safetensors"], setup=lambda d: write(os.path.join(d, "m.safetensors"), tb[:len(tb) - 1000]))
        ex("input is a .pt", ["model.pt"], model=os.path.join(TINY, "model.pt"))
        ex("input is a classifier", ["classifier.safetensors"], model=clf)
        ex("input is an ensemble", ["ensemble.safetensors"], model=os.path.join(BASE, "exp", "50_150_2_5_7", "ensemble.safetensors"))
        ex("input is a gradients file", ["g.safetensors"], model="{D}/g.safetensors", setup=lambda d: write(
            os.path.join(d, "g.safetensors"), st_bytes({"__metadata__": {"format": "ilgpudiffseg-gradients-v1"},
                                                        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4)))
        for k in range(4 if QUICK else 12):
            ex(f"input header mutation #{k}", ["m.safetensors"],
               setup=lambda d, k=k: write(os.path.join(d, "m.safetensors"), mutate(tb[:3000], lo=8) + tb[3000:]))

        def edit(fn):
            def s(d):
                h, data = st_read(tiny)
                new = fn(h, data)
                data = new if isinstance(new, bytes) else data
                write(os.path.join(d, "m.safetensors"), st_bytes(h, data))
            return s
        first = next(k for k in st_read(tiny)[0] if k != "__metadata__")
        for note, fn in [("metadata without flags", lambda h, d: h.__setitem__("__metadata__", {})),
                         ("metadata flags not JSON", lambda h, d: h["__metadata__"].update({k: "{" for k in h["__metadata__"]})),
                         ("a tensor I64", lambda h, d: h[first].update(dtype="I64")),
                         ("a tensor BF16", lambda h, d: h[first].update(dtype="BF16")),
                         ("a tensor missing", lambda h, d: h.pop(first)),
                         ("a tensor reshaped", lambda h, d: h[first].update(shape=[1] + h[first]["shape"])),
                         ("weights all NaN (must run)", lambda h, d: np.full(len(d) // 4, np.nan, "<f4").tobytes()),
                         ("an extra tensor", lambda h, d: h.update(extra={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}))]:
            ex(note, ["m.safetensors"], setup=edit(fn))
            if note.startswith("weights"):
                ex(note.replace("(must run)", "to --half (must run or refuse)"), ["m.safetensors"], "{D}/h.safetensors", ["--half"],
                   setup=edit(fn))
        ex("weights 1e30 to --half (fp16 overflow)", ["m.safetensors", "--half"], "{D}/h.safetensors", ["--half"],
           setup=edit(lambda h, d: np.full(len(d) // 4, 1e30, "<f4").tobytes()))

    return [train_ddpm_cases, loss_cases, sample_cases, synthesize_cases, export_cases]
