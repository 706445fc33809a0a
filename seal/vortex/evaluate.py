"""The serial-section protocol: for a volume with ST on >= 2 sections at different depths,
fine-tune on one section and predict the others.

Methods compared in the same run, on the same held-out spots and genes:

``vortex``      the pretrained model fine-tuned on the fine-tuning section;
``pretrained``  (a) the pretrained model without fine-tuning;
``scratch``     (b) the same architecture fine-tuned on that section without pretraining
                (from the backbone's own initialisation: its local weights, or random);
``2d``          (c) a frozen 2D encoder (the pretrained model's backbone and weights, or
                ``encoder_2d``: ``timm:NAME[@WEIGHTS]`` or a ``seal fit`` model directory)
                on the single nearest slice (the sub-volume's centre plane) + the HEST
                ridge probe (StandardScaler -> PCA -> Ridge) fit on the fine-tuning section;
``texture``     (d) fixed 3D texture/intensity features of each sub-volume
                (:mod:`seal.vortex.texture`) + a quadratic ridge probe, fit on the
                pretraining sections (those the pretrained model was trained on; the
                fine-tuning section when the catalog no longer holds them, said in the results).

Targets are the held-out sections' measured expression, preprocessed as the model's genes
(log-normalised). Metrics: Pearson and Spearman per gene over the spots of each held-out
section; means over genes. Writes ``results.json``, ``results.md``, ``results.png`` and
``predictions.npz`` (every method's predictions and the targets).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hestkit.errors import Opt, fix

from ..data import apply_preprocessing
from ..errors import SelectionError
from ..evaluate import pearson_per_gene, ridge_probe
from ..train import _amp, resolve_device
from .channels import ChannelMapper
from .config import TrainConfig, finetune_config
from .context import context_spec
from .data import SubvolumeTransform
from .encoder import backbone_data_config, build_backbone
from .errors import SectionError
from .model import LoadedModel, load_model
from .texture import TextureProbe, subvolume_features
from .train import finetune, pair_spec, volume_view

__all__ = ["METHODS", "SerialSectionConfig", "SerialSectionResult", "serial_section_eval", "spearman_per_gene"]

METHODS = ("vortex", "pretrained", "scratch", "2d", "texture")
_LABELS = {
    "vortex": "VORTEX (pretrained + fine-tuned)",
    "pretrained": "(a) pretrained, no fine-tuning",
    "scratch": "(b) fine-tuned, no pretraining",
    "2d": "(c) 2D encoder + ridge, nearest slice",
    "texture": "(d) 3D texture features + ridge",
}

_ENC2D = Opt("encoder_2d", "SPEC")


@dataclass(frozen=True)
class SerialSectionConfig:
    """Settings of the protocol. ``finetune_section``: the section to fine-tune on (default:
    the shallowest linked section of each volume); ``heldout``: the sections to evaluate
    (default: all others). ``train`` drives both fine-tuning runs (VORTEX and scratch)."""

    finetune_section: str | None = None
    heldout: tuple[str, ...] | None = None
    train: TrainConfig = field(default_factory=lambda: finetune_config(TrainConfig(lr=1e-4)))
    encoder_2d: str | None = None
    n_components: int = 256
    batch_size: int = 32
    read_chunk: int = 256
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d


@dataclass
class SerialSectionResult:
    """``summary`` (JSON-ready), ``predictions[volume][section][method]`` and ``targets``
    (``n_spots x genes``), ``obs[volume][section]`` (the held-out spots)."""

    summary: dict[str, Any]
    predictions: dict[str, dict[str, dict[str, np.ndarray]]]
    targets: dict[str, dict[str, np.ndarray]]
    obs: dict[str, dict[str, Any]]


def spearman_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Spearman rho per column (Pearson of average ranks); NaN for constant columns."""
    from scipy.stats import rankdata

    return pearson_per_gene(rankdata(y_true, axis=0), rankdata(y_pred, axis=0))


class _Encoder2D:
    """A frozen 2D encoder applied to the centre plane of sub-volumes."""

    def __init__(self, loaded: LoadedModel, spec: str | None, channels: int, device: torch.device) -> None:
        mcfg = loaded.model_cfg
        if spec is None and mcfg.encoder3d == "cnn3d":
            raise SectionError(
                f"{loaded.path}: a 3D CNN model has no 2D backbone for baseline (c)",
                fix=fix(f"give one ({_ENC2D}: timm:NAME[@WEIGHTS], a preset or a `seal fit` model directory)", _ENC2D),
            )
        if spec is None:
            bb, _, _ = build_backbone(mcfg, load=True)
            dcfg = backbone_data_config(bb)
            self.label = f"{mcfg.backbone or mcfg.seal_model} (frozen)"
        else:
            from ..encoders import parse_encoder

            es = parse_encoder(spec)
            bb, dcfg = es.load(device)
            self.label = es.label
        self.model = bb.to(device).eval()
        rule = mcfg.channel_rule if mcfg.channel_rule != "learned" else "pseudo_he"
        self.mapper = ChannelMapper(channels, rule).to(device)
        size = int(dcfg["input_size"][-1]) if spec is not None else loaded.size_px
        self.tf = SubvolumeTransform(size)
        self.mean = torch.tensor(dcfg["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(dcfg["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.device = device

    @torch.no_grad()
    def __call__(self, planes: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` uint8 -> ``(N, D)`` embeddings."""
        x = self.tf(planes).to(self.device)  # planes as "slices": (N, C, size, size)
        rgb = (self.mapper(x) - self.mean) / self.std
        with _amp(self.device):
            out: np.ndarray = self.model(rgb).float().cpu().numpy()
        return out


def _sections(cat: Any, volume_id: str) -> list[tuple[str, float]]:
    sec = cat.sections(volume_id)
    return sorted(((str(r.sample_id), float(r.z_um)) for r in sec.itertuples()), key=lambda t: (t[1], t[0]))


def _chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _metrics(y: np.ndarray, pred: np.ndarray, genes: Sequence[str]) -> dict[str, Any]:
    pr = pearson_per_gene(y, pred)
    sr = spearman_per_gene(y, pred)

    def clean(v: np.ndarray) -> dict[str, float | None]:
        return {g: (float(x) if np.isfinite(x) else None) for g, x in zip(genes, v, strict=True)}

    return {
        "pearson": clean(pr),
        "spearman": clean(sr),
        "pearson_mean": float(np.nanmean(pr)) if np.isfinite(pr).any() else None,
        "spearman_mean": float(np.nanmean(sr)) if np.isfinite(sr).any() else None,
    }


def serial_section_eval(
    catalog_path: str | Path,
    pretrained: str | Path,
    volume_ids: Sequence[str],
    out: str | Path,
    cfg: SerialSectionConfig | None = None,
    *,
    progress: bool = True,
) -> SerialSectionResult:
    """Run the protocol on each volume of ``volume_ids`` (see the module doc)."""
    import catalog

    from .train import _volume_ids, predict_pairs

    cfg = cfg or SerialSectionConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cat = catalog.open(catalog_path)
    device = resolve_device(cfg.device)
    pre = load_model(pretrained)
    known = set(_volume_ids(cat))
    summary: dict[str, Any] = {
        "protocol": "serial-section",
        "pretrained": str(Path(pretrained).resolve()),
        "genes": list(pre.prep.genes),
        "config": cfg.to_dict(),
        "methods": dict(_LABELS),
        "volumes": {},
    }
    texture: TextureProbe | None = None
    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    targets: dict[str, dict[str, np.ndarray]] = {}
    obs_out: dict[str, dict[str, Any]] = {}
    for vid in volume_ids:
        if vid not in known:
            raise SectionError(f"{cat.path}: no volume {vid!r}; the catalog holds {', '.join(sorted(known)) or 'none'}")
        pre.check_channels(int(cat.volume(vid).channels), f"volume {vid!r}")
        secs = _sections(cat, vid)
        if len(secs) < 2:
            raise SectionError(
                f"volume {vid!r} has {len(secs)} linked section(s); the serial-section protocol needs >= 2 at different depths "
                "(link more with `hestkit link-section`)"
            )
        names = [s for s, _ in secs]
        ft = cfg.finetune_section or names[0]
        if ft not in names:
            raise SectionError(f"fine-tuning section {ft!r} is not linked to volume {vid!r} (its sections: {', '.join(names)})")
        held = [s for s in (cfg.heldout or names) if s != ft]
        unknown = [s for s in held if s not in names]
        if unknown or not held:
            raise SectionError(
                f"held-out sections {unknown or held} are not other linked sections of volume {vid!r} ({', '.join(names)})"
            )
        depths = dict(secs)
        if any(abs(depths[s] - depths[ft]) < 1e-6 for s in held):
            warnings.warn(f"volume {vid!r}: a held-out section lies at the fine-tuning section's depth", stacklevel=2)
        seen = vid in pre.meta.get("volumes", []) or vid in pre.meta.get("validation_volumes", [])
        if seen:
            warnings.warn(
                f"volume {vid!r} was among the pretrained model's training volumes: held-out sections are not unseen",
                stacklevel=2,
            )
        vdir = out / vid
        tcfg = cfg.train
        ft_dir = finetune(catalog_path, pretrained, vid, vdir / "vortex_finetuned", cfg=tcfg, sections=[ft], progress=progress)
        sc_dir = finetune(
            catalog_path,
            None,
            vid,
            vdir / "scratch",
            cfg=tcfg,
            sections=[ft],
            model_cfg=pre.model_cfg,
            prep=pre.prep,
            progress=progress,
        )
        models = {"vortex": load_model(ft_dir), "pretrained": pre, "scratch": load_model(sc_dir)}
        spec = pair_spec(pre.model_cfg, pre.size_px)
        ctx = context_spec(pre.model_cfg, pre.size_px)  # the models read their context planes after their own
        enc2d = _Encoder2D(pre, cfg.encoder_2d, pre.channels, device)
        ft_view = volume_view(cat, spec, volumes=[vid], sections=[ft])  # baselines (c), (d): the model's sub-volume only
        ft_y = apply_preprocessing(ft_view, pre.prep)
        c = spec.centre_slice
        ft_emb = np.concatenate([enc2d(ft_view.subvolumes(rows)[:, c]) for rows in _chunks(len(ft_view), cfg.read_chunk)])
        if texture is None:
            texture, summary["texture_fit"] = _fit_texture(cat, spec, pre, ft_view, ft_y, vid, cfg.read_chunk)
        res_v: dict[str, Any] = {
            "finetune_section": ft,
            "finetune_z_um": depths[ft],
            "n_finetune_spots": len(ft_view),
            "target_seen_in_pretraining": seen,
            "encoder_2d": enc2d.label,
            "heldout": {},
        }
        preds[vid], targets[vid], obs_out[vid] = {}, {}, {}
        for sec in held:
            view = volume_view(cat, spec, volumes=[vid], sections=[sec])
            cview = view if ctx is None else volume_view(cat, ctx, volumes=[vid], sections=[sec])
            y = apply_preprocessing(view, pre.prep)
            parts: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
            emb, tex = [], []
            for rows in _chunks(len(view), cfg.read_chunk):
                sub = view.subvolumes(rows)
                tex.append(subvolume_features(sub))
                src: Any = _ArraySource(sub if ctx is None else np.concatenate([sub, cview.subvolumes(rows)], axis=1))
                for m, lm in models.items():
                    parts[m].append(predict_pairs(lm.model, src, lm.size_px, batch_size=cfg.batch_size, device=device))
                emb.append(enc2d(sub[:, c]))
            p = {m: np.concatenate(v) for m, v in parts.items() if v}
            n_comp = min(cfg.n_components, len(ft_view) - 1, ft_emb.shape[1])
            p["texture"] = texture.predict(np.concatenate(tex))
            p["2d"] = ridge_probe(ft_emb, ft_y, np.concatenate(emb), n_components=max(1, n_comp)).astype(np.float32)
            preds[vid][sec], targets[vid][sec], obs_out[vid][sec] = p, y, view.obs
            res_v["heldout"][sec] = {
                "z_um": depths[sec],
                "distance_um": abs(depths[sec] - depths[ft]),
                "n_spots": len(view),
                "methods": {m: _metrics(y, p[m], pre.prep.genes) for m in METHODS},
            }
        summary["volumes"][vid] = res_v
    summary["mean_pearson"] = {
        m: float(
            np.nanmean(
                [
                    h["methods"][m]["pearson_mean"]
                    for v in summary["volumes"].values()
                    for h in v["heldout"].values()
                    if h["methods"][m]["pearson_mean"] is not None
                ]
                or [np.nan]
            )
        )
        for m in METHODS
    }
    summary["mean_spearman"] = {
        m: float(
            np.nanmean(
                [
                    h["methods"][m]["spearman_mean"]
                    for v in summary["volumes"].values()
                    for h in v["heldout"].values()
                    if h["methods"][m]["spearman_mean"] is not None
                ]
                or [np.nan]
            )
        )
        for m in METHODS
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(results_markdown(summary))
    _bar_plot(summary, out / "results.png")
    arrays: dict[str, Any] = {f"{v}/{s}/{m}": a for v, d in preds.items() for s, dd in d.items() for m, a in dd.items()}
    arrays.update({f"{v}/{s}/target": a for v, d in targets.items() for s, a in d.items()})
    np.savez_compressed(out / "predictions.npz", **arrays)
    return SerialSectionResult(summary, preds, targets, obs_out)


def _fit_texture(
    cat: Any, spec: Any, pre: LoadedModel, ft_view: Any, ft_y: np.ndarray, target: str, chunk: int
) -> tuple[TextureProbe, dict[str, Any]]:
    """Baseline (d) fit once per run: on the pretraining sections the catalog still holds
    (excluding the target volumes'), else on the fine-tuning section."""
    known = set(_volume_ids_of(cat))
    vols = [v for v in pre.meta.get("volumes", []) if v in known and v != target]
    secs = list(pre.meta.get("sections", []))
    view, y, where = ft_view, ft_y, "fine-tuning section (the pretraining sections are not in this catalog)"
    if vols:
        try:
            view = volume_view(cat, spec, volumes=vols, sections=secs or None)
            y = apply_preprocessing(view, pre.prep)
            where = "pretraining sections"
        except (SectionError, SelectionError, ValueError, KeyError) as exc:
            warnings.warn(f"baseline (d): the pretraining sections could not be read ({exc}); fitting on the fine-tuning section", stacklevel=2)
            view, y = ft_view, ft_y
    feats = np.concatenate([subvolume_features(view.subvolumes(rows)) for rows in _chunks(len(view), chunk)])
    probe = TextureProbe().fit(feats, y)
    info = {"fit_on": where, "n_spots": len(view), "n_features": int(feats.shape[1]), "alpha": probe.alpha}
    if where != "pretraining sections":
        warnings.warn(f"baseline (d) is fit on the {where}", stacklevel=2)
    return probe, info


def _volume_ids_of(cat: Any) -> list[str]:
    from .train import _volume_ids

    return list(_volume_ids(cat))


class _ArraySource:
    """Sub-volumes already read, as a pair source (expression unused)."""

    def __init__(self, subs: np.ndarray) -> None:
        self.subs = subs

    def __len__(self) -> int:
        return len(self.subs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, None]:
        return self.subs[i], None


def results_markdown(summary: dict[str, Any]) -> str:
    """A markdown table: mean Pearson / Spearman per volume, held-out section and method."""
    lines = [
        "| volume | fine-tune section | held-out section | distance (um) | spots | "
        + " | ".join(_LABELS[m] for m in METHODS)
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(METHODS),
    ]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for vid, v in summary["volumes"].items():
        for sec, h in v["heldout"].items():
            cells = [f"{f(h['methods'][m]['pearson_mean'])} / {f(h['methods'][m]['spearman_mean'])}" for m in METHODS]
            lines.append(
                f"| {vid} | {v['finetune_section']} | {sec} | {h['distance_um']:.0f} | {h['n_spots']} | "
                + " | ".join(cells)
                + " |"
            )
    mp, ms = summary["mean_pearson"], summary["mean_spearman"]
    lines.append("| **mean** | | | | | " + " | ".join(f"**{mp[m]:.3f} / {ms[m]:.3f}**" for m in METHODS) + " |")
    return "Mean over genes of per-gene Pearson / Spearman at held-out depths.\n\n" + "\n".join(lines) + "\n"


def _bar_plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    groups = [(vid, sec) for vid, v in summary["volumes"].items() for sec in v["heldout"]]
    fig = Figure(figsize=(max(5.0, 1.6 * len(groups) + 2) + 3.0, 3.8))
    ax = fig.subplots()
    w = 0.8 / len(METHODS)
    for k, m in enumerate(METHODS):
        vals = [summary["volumes"][v]["heldout"][s]["methods"][m]["pearson_mean"] or 0.0 for v, s in groups]
        ax.bar(np.arange(len(groups)) + (k - (len(METHODS) - 1) / 2) * w, vals, w, label=_LABELS[m])
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{v}\n{s}" for v, s in groups], fontsize=8)
    ax.set_ylabel("mean Pearson r over genes")
    ax.set_title("serial-section protocol: held-out depths")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
