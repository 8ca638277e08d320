"""``deftmed train-prior``, ``sample-prior`` and ``import-prior``."""

from __future__ import annotations

from dataclasses import replace

from deftmed.cli.common import add_training_args, run_training, train_config
from deftmed.errors import ConfigError


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def register(sub) -> None:
    p = sub.add_parser("train-prior", help="train an unconditional diffusion prior")
    p.add_argument("--data", default="ellipses",
                   help="'ellipses', 'anatomy', or a .npy/.npz/.h5 file or folder of images in [0,1]")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=_int_tuple, default=(32, 48, 64, 96))
    p.add_argument("--attention-levels", type=_int_tuple, default=(0, 0, 0, 1),
                   help="1 where a level has self-attention, e.g. 0,0,0,1")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--norm-groups", type=int, default=16)
    p.add_argument("--head-channels", type=int, default=32, help="channels per attention head")
    p.add_argument("--prediction", default="v", choices=["epsilon", "v"],
                   help="network parametrisation (the prior is an epsilon model either way); "
                        "v is well conditioned at high noise levels")
    p.add_argument("--init", default=None,
                   help="warm start from this prior (path or shipped name): its architecture, "
                        "schedule and parametrisation are kept and --channels etc. are ignored")
    add_training_args(p, steps=20000, lr=2e-4, warmup=200, checkpoint_every=500)
    p.add_argument("--sample-every", type=int, default=2000, help="sample grid PNG period (0: never)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_train)

    p = sub.add_parser("sample-prior", help="draw unconditional samples from a prior into a PNG grid")
    p.add_argument("--prior", default="prior-ellipses64", help="checkpoint path or shipped name")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--spacing", default="trailing", choices=["leading", "linspace", "trailing"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="prior_samples.png")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_sample)

    p = sub.add_parser("import-prior",
                       help="convert a MONAI DiffusionModelUNet state dict trained elsewhere")
    p.add_argument("weights", help=".safetensors or .pt/.pth state dict (loaded with weights_only)")
    p.add_argument("--meta", required=True, help="YAML describing architecture, schedule, image size")
    p.add_argument("--out", required=True, help="deftmed prior checkpoint to write")
    p.set_defaults(func=run_import)


def run_train(args) -> int:
    from deftmed.data.datasets import open_images, dataset_intensity
    from deftmed.diffusion.prior import PriorSpec
    from deftmed.diffusion.schedule import NoiseSchedule
    from deftmed.diffusion.train import train_prior
    from deftmed.diffusion.unet import UNetConfig
    from deftmed.distributed import pick_device

    device = pick_device(args.device)
    source = open_images(args.data, "train", args.image_size)
    intensity = dataset_intensity(args.data)
    init = None
    if args.init:
        from deftmed.diffusion.prior import DiffusionPrior
        from deftmed.shipped import resolve_checkpoint
        init = DiffusionPrior.load(resolve_checkpoint(args.init))
        if init.spec.image_size != args.image_size:
            raise ConfigError(f"--init prior is for {init.spec.image_size}x{init.spec.image_size} "
                              f"images but --image-size is {args.image_size}")
        if init.spec.unet.in_channels != source.channels:
            raise ConfigError(f"--init prior has {init.spec.unet.in_channels} channel(s) but the "
                              f"data have {source.channels}")
    spec = PriorSpec(unet=UNetConfig(in_channels=source.channels, out_channels=source.channels,
                                     channels=args.channels,
                                     attention_levels=tuple(bool(a) for a in args.attention_levels),
                                     num_res_blocks=args.num_res_blocks,
                                     norm_num_groups=args.norm_groups,
                                     num_head_channels=args.head_channels),
                     schedule=NoiseSchedule(), image_size=args.image_size, intensity=intensity,
                     data=source.description, prediction=args.prediction)
    if init is not None:
        spec = replace(init.spec, intensity=intensity, data=source.description)
    return run_training(
        lambda dist, command: train_prior(source, spec, train_config(args), args.out, device,
                                          dist, args.resume, args.sample_every, command, init),
        "prior", device)


def run_sample(args) -> int:
    import torch

    from deftmed.diffusion.ddim import sample_unconditional
    from deftmed.diffusion.train import save_sample_grid
    from deftmed.distributed import pick_device
    from deftmed.fileio import check_writable
    from deftmed.shipped import load_prior

    check_writable(args.out)
    prior = load_prior(args.prior, pick_device(args.device))
    gen = torch.Generator().manual_seed(args.seed)
    samples = sample_unconditional(prior, args.n, args.steps, args.eta, args.spacing, gen,
                                   progress=True)
    save_sample_grid(samples, args.out, f"{args.prior}: {args.n} samples, {args.steps} DDIM steps")
    print(f"wrote {args.out}")
    return 0


def run_import(args) -> int:
    from deftmed.diffusion.convert import import_monai_prior

    meta = import_monai_prior(args.weights, args.meta, args.out)
    print(f"imported prior ({meta['parameters']} parameters) to {args.out}")
    return 0
