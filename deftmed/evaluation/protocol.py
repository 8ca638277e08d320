"""Named, frozen experiment protocols (``protocols/*.yaml``).

A protocol fixes everything a number depends on: dataset and split sizes, image and simulation
grids, scanner geometry, noise model, metric convention and seeds. Results files carry its name
and ``hash()`` (of the canonical content, geometry and noise resolved), so numbers produced
under different settings can never be confused.

Measurements are simulated per image from ``(seeds.noise, split, index)``: image ``i`` gets the
same sinogram whatever the batch size, process count or resume point.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from deftmed.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("name", "description", "dataset", "noise", "splits", "metrics", "seeds")
#: exactly one of these says what is measured: a CT scanner geometry or an image operator
TASK_FIELDS = ("geometry", "operator")
DATASET_KINDS = ("ellipses", "anatomy", "natural", "files", "lodopab", "aapm")
SPLIT_OFFSETS = {"train": 0, "validation": 1, "test": 2}


def _find(name: str, folder: str, suffix: str = ".yaml", base: Path | None = None) -> Path:
    """Resolve a file given as a path or a bare name in ``folder`` (cwd, then the repository)."""
    p = Path(name)
    candidates = [p] if p.suffix else []
    for root in ([base] if base else []) + [Path.cwd(), REPO_ROOT]:
        candidates += [root / p, root / folder / p, root / folder / (p.name + suffix)]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"cannot find {folder[:-1]} {name!r} (looked in ./{folder}/ and "
                      f"{REPO_ROOT / folder}/)")


@dataclass
class Protocol:
    name: str
    description: str
    dataset: dict
    geometry_file: str | None
    noise_spec: dict
    splits: dict
    metrics: dict
    seeds: dict
    runs_on: str = "cpu"
    weights: dict = field(default_factory=dict)
    source: Path | None = None
    operator_spec: dict | None = None

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "Protocol":
        path = _find(str(name_or_path), "protocols")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(d, path)

    @classmethod
    def from_dict(cls, d: dict, path: Path | None = None) -> "Protocol":
        where = str(path or "protocol")
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {missing}; a protocol needs {list(REQUIRED)}")
        known = set(REQUIRED) | set(TASK_FIELDS) | {"runs_on", "weights"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        if sum(k in d for k in TASK_FIELDS) != 1:
            raise ConfigError(f"{where}: give exactly one of 'geometry' (a CT scanner geometry) "
                              "or 'operator' (an image operator such as {type: super_resolution})")
        if "operator" in d and not isinstance(d["operator"], dict):
            raise ConfigError(f"{where}: 'operator' must be a mapping with a 'type'")
        ds = d["dataset"]
        if not isinstance(ds, dict) or ds.get("kind") not in DATASET_KINDS:
            raise ConfigError(f"{where}: dataset.kind must be one of {DATASET_KINDS}")
        if "image_size" not in ds:
            raise ConfigError(f"{where}: dataset.image_size is required")
        for split in ("validation", "test"):
            if not isinstance(d["splits"].get(split), int) or d["splits"][split] < 1:
                raise ConfigError(f"{where}: splits.{split} must be a positive image count")
        if "noise" not in d["seeds"]:
            raise ConfigError(f"{where}: seeds.noise is required")
        if "data_range" not in d["metrics"]:
            raise ConfigError(f"{where}: metrics.data_range is required")
        geometry = str(d["geometry"]) if "geometry" in d else None
        proto = cls(d["name"], d["description"], ds, geometry, d["noise"], d["splits"],
                    d["metrics"], d["seeds"], d.get("runs_on", "cpu"), d.get("weights", {}), path,
                    d.get("operator"))
        proto.hu_metric_settings()  # validates metrics.hu
        if proto.operator_spec is not None:
            proto.operators()  # validates the operator spec
        return proto

    # --- resolved parts --------------------------------------------------------------------
    @property
    def is_ct(self) -> bool:
        """True for CT protocols (a scanner geometry), False for image-operator ones."""
        return self.operator_spec is None

    def geometry(self):
        from deftmed.physics.geometry import ScanGeometry
        if not self.is_ct:
            raise ConfigError(f"protocol {self.name} measures with an image operator "
                              f"({self.operator_spec.get('type')}), not a CT scanner geometry")
        base = self.source.parent.parent if self.source else None
        return ScanGeometry.from_yaml(_find(self.geometry_file, "geometries", base=base))

    def noise(self):
        from deftmed.physics.noise import load_noise
        return load_noise(self.noise_spec)

    def hu_metric_settings(self) -> tuple | None:
        """``(IntensityTransform, kwargs of hu_metrics)`` when ``metrics.hu`` is declared.

        ``metrics.hu`` may be ``true`` or a mapping with ``window``, ``soft_tissue`` (each
        ``[lo, hi]`` in HU), ``body_threshold`` (HU) and ``intensity`` (an intensity-transform
        mapping; default: the dataset kind's declared transform).
        """
        from deftmed.evaluation.metrics import HU_DEFAULTS

        cfg = self.metrics.get("hu")
        if not cfg:
            return None
        where = f"protocol {self.name}: metrics.hu"
        cfg = {} if cfg is True else cfg
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where} must be true or a mapping")
        unknown = sorted(set(cfg) - set(HU_DEFAULTS) - {"intensity"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}")
        from deftmed.data.datasets import dataset_intensity
        from deftmed.data.intensity import IntensityTransform
        d = cfg.get("intensity") or dataset_intensity(self.dataset["kind"])
        if d is None:
            raise ConfigError(f"{where}: dataset kind {self.dataset['kind']!r} declares no "
                              "intensity transform; give metrics.hu.intensity")
        intensity = IntensityTransform.from_dict(d)
        kwargs = {}
        for key, default in HU_DEFAULTS.items():
            v = cfg.get(key, default)
            ok = (isinstance(v, (list, tuple)) and len(v) == 2 and v[1] > v[0]) \
                if isinstance(default, tuple) else isinstance(v, (int, float))
            if not ok:
                raise ConfigError(f"{where}.{key}: invalid value {v!r}")
            kwargs[key] = tuple(float(a) for a in v) if isinstance(default, tuple) else float(v)
        return intensity, kwargs

    @property
    def image_size(self) -> int:
        return int(self.dataset["image_size"])

    @property
    def simulation_size(self) -> int | None:
        s = self.dataset.get("simulation_size")
        return int(s) if s else None

    def canonical(self) -> dict:
        task = ({"geometry": self.geometry().canonical()} if self.is_ct
                else {"operator": self.operators()[0].to_dict()})
        return {"name": self.name, "dataset": self.dataset, **task,
                "noise": self.noise().to_dict(), "splits": self.splits, "metrics": self.metrics,
                "seeds": self.seeds}

    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- data ----------------------------------------------------------------------------
    def images(self, split: str):
        """The split's image source (phantoms, or files for real datasets)."""
        from deftmed.data.datasets import open_images
        kind = self.dataset["kind"]
        if kind in ("ellipses", "anatomy", "natural"):
            length = self.splits.get(split, 32000 if split == "train" else 1000)
            return open_images(kind, split, self.image_size, length)
        root = os.environ.get("DEFTMED_DATA", self.dataset.get("root", "data"))
        files = self.dataset.get("files", {}).get(split)
        if not files:
            raise ConfigError(f"protocol {self.name}: dataset has no files for split {split!r}")
        path = Path(root) / files
        if not path.exists():
            raise ConfigError(f"protocol {self.name} needs {path} (set DEFTMED_DATA to the data "
                              f"root; see data_manifests/ and `deftmed data verify`)")
        return open_images(str(path), split, self.image_size,
                           channels=int(self.dataset.get("channels", 1)))

    def operators(self, device="cpu"):
        """``(op, sim_op)``: the reconstruction operator and the (finer) simulation operator
        (CT; None for image operators, which act on the image grid itself)."""
        if not self.is_ct:
            from deftmed.physics.imaging import build_operator
            spec = dict(self.operator_spec)
            if spec.get("type") == "random_inpainting":
                spec.setdefault("size", self.image_size)
            return build_operator(spec), None
        from deftmed.physics.raytransform import RayTransform
        geometry = self.geometry()
        op = RayTransform(geometry)
        sim = self.simulation_size
        sim_op = RayTransform(geometry.scaled(sim)) if sim and sim != self.image_size else None
        return op, sim_op

    def simulate(self, split: str, indices, op=None, sim_op=None, source=None, noise=None,
                 device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Ground truth images (n,C,H,W) and noisy measurements for images ``indices``."""
        x, y, _ = self.measure(split, indices, op, sim_op, source, noise, device)
        return x, y

    def measure(self, split: str, indices, op=None, sim_op=None, source=None, noise=None,
                device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
        """Like :meth:`simulate`, plus the operator that measured this batch: ``op`` itself,
        or for a family of random operators (inpainting with random masks) the batch's
        member, with one mask per image drawn from the image's seed."""
        if op is None:
            op, sim_op = self.operators()
        source = source or self.images(split)
        noise = noise or self.noise()
        idx = np.asarray(indices, dtype=np.int64)
        seeds = [int(self.seeds["noise"]) * 1_000_003 + SPLIT_OFFSETS[split] * 10_000_000 + int(i)
                 for i in idx]
        if hasattr(op, "for_seeds"):
            op = op.for_seeds([s + 500_000_000 for s in seeds]).to(device)
        x = source.tensor(idx, self.image_size, device)
        if sim_op is not None:
            clean = sim_op(source.tensor(idx, sim_op.image_shape[0], device))
        else:
            clean = op(x)
        ys = [noise.sample(clean[k:k + 1], torch.Generator().manual_seed(seed))
              for k, seed in enumerate(seeds)]
        return x, (torch.cat(ys) if ys else clean), op
