"""What the CLI's commands share: the choices of enum-like options and the option aliases.

The choices mirror the library's own tables (heads.HEAD_KINDS, labels.ALIGN_MODES, ...), which
import jax or xarray; a test keeps the two equal, so that `--help` stays fast. Defaults the
library shares with the CLI live with the library (e.g. `ethoprism.probe.defaults`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from ethoprism.probe import defaults


class Head(StrEnum):
    map = "map"
    fmap = "fmap"
    linear = "linear"
    mlp = "mlp"


class Align(StrEnum):
    centre = "centre"
    majority = "majority"
    any = "any"


class Resize(StrEnum):
    squash = "squash"
    pad = "pad"
    crop = "crop"


class Interpolation(StrEnum):  # preprocess.INTERPOLATIONS
    area = "area"
    bilinear = "bilinear"
    bicubic = "bicubic"
    area_lowres = "area-lowres"
    nvdec_linear = "nvdec-linear"


class Decoder(StrEnum):  # decoders.DECODERS
    auto = "auto"
    cpu = "cpu"
    nvdec = "nvdec"


class TokenLayout(StrEnum):
    float16_round7 = "float16-round7"
    float16 = "float16"
    float16_uncompressed = "float16-uncompressed"
    int8 = "int8"


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class Videos(StrEnum):
    test = "test"
    all = "all"


StoreArg = Annotated[
    str, typer.Argument(help="A feature store: a directory, http(s):// or s3:// URL.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        help="Keep what is read from a remote store in this local directory (meant for "
        "published stores, which never change: a store still being written is seen as it "
        "was when first read)."
    ),
]
IndexDirOpt = Annotated[
    str | None,
    typer.Option(
        "--index-dir",
        help="The approximate index's local directory (default: beside a local store, "
        "STORE.ann; required for an http(s):// or s3:// store, which is never written to). "
        "Given to `retrieve query`, it implies --approx.",
    ),
]
ModelOpt = Annotated[
    str, typer.Option(help="Encoder config: videoprism-b, videoprism-l, videoprism-tiny.")
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        help="Weights: an official-format .npz path, or 'random' (demo only). "
        "Default: $ETHOPRISM_CHECKPOINT, then the Hugging Face cache / download."
    ),
]
DtypeOpt = Annotated[
    Dtype, typer.Option(help="Matmul dtype: float32, or bfloat16 (bf16 matmuls, f32 softmax).")
]
SchedulerOpt = Annotated[
    str | None, typer.Option(help="Dask scheduler address: spread the work over its workers.")
]
LabelColumnOpt = Annotated[str, typer.Option(help="The label column, e.g. action or activity.")]
# retrieve's old spelling of --label-column, kept hidden for one release
ColumnAliasOpt = Annotated[
    str | None, typer.Option("--column", hidden=True, help="Old name of --label-column.")
]
BackgroundOpt = Annotated[
    str, typer.Option(help="Label of frames without behaviour (excluded from scores).")
]
AlignOpt = Annotated[
    Align,
    typer.Option(help="Window label from its centre frame, majority or any (any: multi-label)."),
]
VideoFilterOpt = Annotated[
    list[str] | None, typer.Option(help="Only this video (file name); repeatable.")
]
LABEL_COLUMN, BACKGROUND = defaults.LABEL_COLUMN, defaults.BACKGROUND
