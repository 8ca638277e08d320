"""``deftmed finetune`` and ``deftmed reconstruct``."""

from __future__ import annotations

from deftmed.cli.common import add_training_args, run_training, train_config


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a DEFT h-transform for a scanner geometry")
    p.add_argument("--prior", default=None,
                   help="prior checkpoint or shipped name (default: the protocol's prior, else "
                        "prior-ellipses64)")
    p.add_argument("--protocol", default=None,
                   help="take geometry, noise, data and simulation grid from a protocol")
    p.add_argument("--geometry", default=None, help="scanner geometry YAML")
    p.add_argument("--operator", default=None,
                   help="image task instead of CT: operator YAML file or inline mapping, e.g. "
                        "'{type: super_resolution, factor: 4}'")
    p.add_argument("--noise", default=None,
                   help="noise YAML file, or an inline mapping like '{type: gaussian, relative: 0.025}'")
    p.add_argument("--data", default=None,
                   help="training images: 'ellipses' (default without --protocol), 'anatomy', "
                        "'natural', or a file/folder of images in [0,1]")
    p.add_argument("--val-data", default=None,
                   help="validation images (default: the validation split of a phantom --data)")
    p.add_argument("--sim-size", type=int, default=None,
                   help="simulate measurements on this finer grid (phantom data; avoids the inverse crime)")
    p.add_argument("--variant", default="full",
                   choices=["full", "no_x0hat", "no_guidance_path", "aty_only"])
    p.add_argument("--channels", type=_int_tuple, default=(8, 16, 32), help="h-network UNet channels")
    p.add_argument("--backprojection", default="fbp", choices=["fbp", "adjoint"],
                   help="B in the guidance input g = B(score)")
    p.add_argument("--guidance-filter", default="Hann",
                   help="FBP filter of the guidance back-projection (CT)")
    p.add_argument("--guidance-frequency-scaling", type=float, default=1.0,
                   help="FBP cut-off of the guidance back-projection (CT; < 1 smooths noisy data)")
    add_training_args(p, steps=2000, lr=1e-3, warmup=100, checkpoint_every=250)
    p.add_argument("--val-every", type=int, default=500, help="validation period in steps (0: off)")
    p.add_argument("--val-n", type=int, default=4)
    p.add_argument("--val-steps", type=int, default=100, help="DDIM steps of validation reconstructions")
    p.add_argument("--out", required=True, help="h-transform checkpoint to write (.safetensors)")
    p.set_defaults(func=run_finetune)

    p = sub.add_parser("reconstruct", help="reconstruct sinograms (DEFT or FBP)")
    p.add_argument("sinogram", help=".npy/.npz/.h5 file: (views, det), (N, views, det) or (N,1,views,det)")
    p.add_argument("--geometry", required=True, help="scanner geometry YAML of the sinograms")
    p.add_argument("--method", default="deft", choices=["deft", "fbp"])
    p.add_argument("--h", default=None, help="h-transform checkpoint or shipped name (DEFT)")
    p.add_argument("--prior", default=None,
                   help="prior checkpoint (default: the shipped prior the h-transform was tuned on)")
    p.add_argument("--noise", default=None, help="noise model (default: the h-transform's)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--samples", type=int, default=1, help="posterior samples per sinogram (K)")
    p.add_argument("--filter", default="Hann", help="FBP filter")
    p.add_argument("--frequency-scaling", type=float, default=1.0, help="FBP cut-off")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=".npy, .h5, .png, or a folder for a DICOM series")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_reconstruct)


def run_finetune(args) -> int:
    from deftmed.data.datasets import PHANTOM_KINDS, open_images
    from deftmed.deft.finetune import finetune
    from deftmed.cli.common import load_mapping_arg, load_noise_arg
    from deftmed.deft.hnet import HNetConfig
    from deftmed.distributed import pick_device
    from deftmed.errors import ConfigError
    from deftmed.fileio import check_writable
    from deftmed.physics.geometry import ScanGeometry
    from deftmed.physics.raytransform import RayTransform
    from deftmed.shipped import load_prior

    check_writable(args.out)
    geometry = operator = None
    if args.protocol:
        from deftmed.evaluation.protocol import Protocol
        if args.geometry or args.noise or args.operator:
            raise ConfigError("give either --protocol or --geometry/--operator and --noise")
        proto = Protocol.load(args.protocol)
        noise = proto.noise()
        args.prior = args.prior or proto.weights.get("prior")
        if proto.is_ct:
            geometry = proto.geometry()
        else:
            operator = proto.operators()[0]
        if args.data is None and proto.dataset["kind"] in PHANTOM_KINDS:
            args.data = proto.dataset["kind"]
        args.sim_size = args.sim_size or proto.simulation_size
    else:
        if not ((args.geometry or args.operator) and args.noise):
            raise ConfigError("finetune needs --geometry (CT) or --operator (image task), and "
                              "--noise; or --protocol")
        if args.geometry and args.operator:
            raise ConfigError("give --geometry (CT) or --operator (image task), not both")
        noise = load_noise_arg(args.noise)
        if args.geometry:
            geometry = ScanGeometry.from_yaml(args.geometry)
        else:
            from deftmed.physics.imaging import build_operator
            operator = build_operator(load_mapping_arg(args.operator, "--operator"))
    device = pick_device(args.device)
    prior = load_prior(args.prior or "prior-ellipses64", device)
    sim_op = None
    if geometry is not None:
        if geometry.shape[0] != prior.spec.image_size:
            raise ConfigError(f"geometry image size {geometry.shape[0]} differs from the prior's "
                              f"{prior.spec.image_size}; write the geometry for the prior's grid")
        op = RayTransform(geometry)
        if args.sim_size and args.sim_size != geometry.shape[0]:
            if args.data not in PHANTOM_KINDS:
                raise ConfigError("--sim-size needs phantom data (images rendered at any "
                                  "resolution)")
            sim_op = RayTransform(geometry.scaled(args.sim_size))
    else:
        op = operator
    if args.protocol and args.data is None:  # the protocol's own dataset (e.g. files)
        source = proto.images("train")
        val = proto.images("validation") if not args.val_data else \
            open_images(args.val_data, "validation", prior.spec.image_size)
    else:
        args.data = args.data or "ellipses"
        source = open_images(args.data, "train", prior.spec.image_size)
        val_spec = args.val_data or (args.data if args.data in PHANTOM_KINDS else None)
        val = open_images(val_spec, "validation", prior.spec.image_size) if val_spec else None
    hcfg = HNetConfig(channels=args.channels, variant=args.variant)
    return run_training(
        lambda dist, command: finetune(prior, op, noise, source, hcfg, train_config(args),
                                       args.out, device, dist, args.resume,
                                       {"backprojection": args.backprojection,
                                        "filter_type": args.guidance_filter,
                                        "frequency_scaling": args.guidance_frequency_scaling},
                                       sim_op, val,
                                       args.val_n, args.val_every, args.val_steps, command),
        "h-transform", device)


def run_reconstruct(args) -> int:
    import torch

    from deftmed.data.reconio import check_output, load_sinograms, write_reconstruction
    from deftmed.distributed import pick_device
    from deftmed.errors import ConfigError
    from deftmed.methods.base import reconstruct_in_batches
    from deftmed.physics.geometry import ScanGeometry
    from deftmed.cli.common import load_noise_arg
    from deftmed.physics.raytransform import RayTransform

    check_output(args.out)
    geometry = ScanGeometry.from_yaml(args.geometry)
    y = load_sinograms(args.sinogram, geometry)
    device = pick_device(args.device)
    op = RayTransform(geometry)
    intensity = None
    if args.method == "deft":
        from deftmed.methods.loading import load_deft
        if not args.h:
            raise ConfigError("DEFT needs an h-transform: --h CHECKPOINT (or a shipped name)")
        method, noise, intensity = load_deft(args.h, args.prior, device, args.steps, args.eta,
                                             args.samples)
        if args.noise:
            method.model.check_compatible(noise=load_noise_arg(args.noise))
        method.model.check_compatible(geometry=geometry)
        if args.samples > 1 and args.eta == 0:
            raise ConfigError("--samples > 1 needs --eta > 0 (with eta = 0 DDIM is deterministic "
                              "and all samples would be equal)")
    else:
        from deftmed.methods.fbp import FBPReconstructor
        from deftmed.physics.noise import GaussianNoise
        method = FBPReconstructor(args.filter, args.frequency_scaling)
        noise = load_noise_arg(args.noise) if args.noise else GaussianNoise(sigma=1.0)
    gen = torch.Generator().manual_seed(args.seed)
    rec = reconstruct_in_batches(method, y.to(device), op, noise, args.batch_size, gen,
                                 progress=True)
    desc = f"{args.method.upper()} {geometry.name or geometry.kind}"
    paths = write_reconstruction(args.out, rec.image, rec.std, intensity,
                                 geometry.pixel_spacing, desc,
                                 {"method": method.settings(), "geometry": geometry.to_dict()})
    print(f"reconstructed {y.shape[0]} sinogram(s) with {args.method} "
          f"({rec.seconds:.2f} s/image); wrote {', '.join(str(p) for p in paths[:3])}"
          f"{' ...' if len(paths) > 3 else ''}")
    return 0
