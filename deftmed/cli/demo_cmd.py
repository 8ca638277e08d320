"""``deftmed demo``: the main job on the embedded default protocol and shipped weights."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="FBP vs DEFT on fresh test phantoms with the shipped weights")
    p.add_argument("--protocol", default="ellipses64-sv20")
    p.add_argument("--n", type=int, default=4, help="number of test phantoms")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per image")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0 was best on validation)")
    p.add_argument("--start", type=int, default=0, help="first test image index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from deftmed.demo import run_demo
    from deftmed.distributed import pick_device
    from deftmed.evaluation.protocol import Protocol

    proto = Protocol.load(args.protocol)
    print(f"protocol {proto.name}: {proto.description}")
    rows, fig = run_demo(args.out, args.protocol, args.n, args.steps, args.samples, args.eta,
                         args.start, pick_device(args.device), args.seed)
    print(f"\n{'method':<32} {'PSNR (dB)':>10} {'SSIM':>7} {'s/image':>9}")
    for r in rows:
        print(f"{r.method:<32} {r.psnr:>10.2f} {r.ssim:>7.3f} {r.seconds:>9.2f}")
    print(f"\n{args.n} test phantoms; PSNR/SSIM with data range {proto.metrics['data_range']} on the "
          f"model range [0,1]. Figure: {fig}")
    return 0
