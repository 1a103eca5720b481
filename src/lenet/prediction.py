"""Predict digits from a person's own images: loading them safely, MNIST-style preprocessing, the model.

`preprocess` is the one way an image becomes network input; `lenet predict`, the web server and any
later caller share it. It redoes what NIST/LeCun did to make MNIST: grayscale, white ink on black,
crop to the ink, scale the longer side to 20 px (anti-aliased, aspect kept), then place the digit in
a 28x28 frame (SHAPE.image) with its centre of mass at the centre.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lenet.errors import LenetError
from lenet.model import SHAPE, LeNet
from lenet.runs import RunError, load_model, one_line

if TYPE_CHECKING:  # PIL is an extra, imported where it is used so `import lenet` stays light
    from PIL import Image as PILImage

DEFAULT_MODEL = Path(__file__).parent / "assets" / "model.safetensors"  # the shipped reference run
# `lenet predict` refuses larger image files, judged from the header: a decompression bomb would exhaust
# memory. (The web server judges with the same code against its own, stricter budget per request.)
MAX_FILE_PIXELS = 40_000_000
# Formats Pillow decodes itself. Not EPS or PDF: Pillow hands those to Ghostscript, a program that should
# never see a stranger's file; not the many exotic plugins either, each one more parser to trust.
RASTER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FRAME = SHAPE.image  # MNIST's image side, 28: what the network reads
BOX = 20  # MNIST scaled each digit so its longer side is 20 px
CENTRE = FRAME / 2  # where MNIST's test digits have their centre of mass (mean 13.99, 14.01 in row, column)
MIN_CONTRAST = 0.1  # ink must differ from the paper by this much of the full range, else the image is blank
NOISE_MADS = 5.0  # paper noise: ink fainter than the paper's median + 5 robust stddevs is paper (a 3-sigma
# cut lets 0.1% of a photo's paper through, and one stray pixel stretches the bounding box)
BOX_INK = 0.1  # the bounding box is that of ink at >= 10% strength: JPEG ringing and grain around the
# strokes would stretch it (measured on MNIST saved as JPEG q75: 87% -> 98% agreement with the tensors)
TOP_K = 3


class ImageError(LenetError):
    """An image cannot be used: not an image, damaged, too large, or blank. The message is one line."""


# ---------------------------------------------------------------- loading


def open_image(source: str | Path | bytes, max_pixels: int = MAX_FILE_PIXELS) -> PILImage.Image:
    """Open an image file or raw bytes and judge it from its header alone, or raise ImageError.

    The one place an image is judged before decoding: it must exist, hold bytes, be one of
    RASTER_FORMATS and have at most `max_pixels` pixels, so a small file that claims gigapixels
    costs nothing. Nothing is decoded yet: `decode` does that.
    """
    from PIL import Image, UnidentifiedImageError

    name = source_name(source)
    if not isinstance(source, bytes):
        check_file(Path(source))
    elif not source:
        raise ImageError(f"{name}: empty file (0 bytes)")
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file, formats=RASTER_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: too large to decode safely (limit {max_pixels:,} pixels)") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: {unread_format(file)}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{name}: damaged or unreadable image ({one_line(e)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} pixels is too large (limit {max_pixels:,} pixels); scale it down"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: blank image (it has no pixels)")
    return image


def check_file(path: Path) -> None:
    """ImageError unless `path` is a regular file that holds bytes; the message says what it is instead."""
    if path.is_dir():
        raise ImageError(f"{path}: a folder, not an image file")
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file (a device, pipe or socket); give an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def unread_format(file: str | Path | io.BytesIO) -> str:
    """Why a file is not read: the format Pillow would take it for, named so the refusal is clear."""
    from PIL import Image

    try:  # header parsers only: a refused format is never decoded (EPS would go to Ghostscript)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file) as image:
                kind = image.format
    except Exception:  # unknown to Pillow too, or a damaged header: nothing to name
        kind = None
    formats = ", ".join(RASTER_FORMATS)
    if kind is None:
        return f"not an image (formats read: {formats})"
    return f"{kind} images are not accepted: not an image format lenet reads ({formats})"


def decode(image: PILImage.Image, name: str = "image data") -> PILImage.Image:
    """Decode an image from `open_image` (first frame of an animation), or raise ImageError."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: too large to decode safely") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{name}: damaged or unreadable image ({one_line(e)})") from None
    return image


def load_image(source: str | Path | bytes, max_pixels: int = MAX_FILE_PIXELS) -> PILImage.Image:
    """Open an image file or raw bytes, judged from its header, then fully decoded; or raise ImageError."""
    return decode(open_image(source, max_pixels), source_name(source))


def source_name(source: str | Path | bytes) -> str:
    return "image data" if isinstance(source, bytes) else str(source)


# ---------------------------------------------------------------- preprocessing


def preprocess(image: PILImage.Image) -> torch.Tensor:
    """Any image -> float32 (FRAME, FRAME) in [0, 1], white digit on black, made the way MNIST was.

    Raises ImageError when the image has no ink (a blank or uniform picture).
    """
    gray, alpha = grayscale(image)  # (H, W) in [0, 1]
    if alpha is not None:
        gray = flatten_alpha(gray, alpha)
    ink = ink_map(gray)
    rows, cols = np.nonzero(ink >= BOX_INK)
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # crop to the ink's bounding box
    return torch.from_numpy(centre_in_frame(scale_to_box(digit)))


def grayscale(image: PILImage.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in [0, 1] as float32 (x / 255, like the MNIST tensors), and alpha if transparent."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale: PIL's "L" would clip
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ImageError("the image holds values that are not finite numbers (NaN or infinity)")
        top = 1.0 if mode == "F" and values.max() <= 1 else 255.0 if values.max() <= 255 else 65535.0
        return np.clip(values / top, 0, 1), None
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
            return np.asarray(rgba.convert("L"), dtype=np.float32) / 255, alpha
        return np.asarray(image.convert("L"), dtype=np.float32) / 255, None
    except (ValueError, OSError) as e:  # a mode Pillow cannot turn into grayscale (LAB, ...)
        raise ImageError(f"cannot read {mode} images ({one_line(e)}); save it as RGB or grayscale") from None


def flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto a background of the opposite brightness to what is drawn.

    A transparent image is usually ink alone (a canvas drawing, a cut-out): dark strokes go onto
    white, light strokes onto black, so the ink never vanishes into a background of its own colour.
    """
    if alpha.sum() == 0:
        raise ImageError("blank image: it is fully transparent (no ink)")
    drawn = float((gray * alpha).sum() / alpha.sum())
    background = 1.0 if drawn < 0.5 else 0.0
    return gray * alpha + background * (1 - alpha)


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Luminance -> ink in [0, 1] (1 = full ink, 0 = paper); raises ImageError when there is no ink.

    The paper is the median of the outer ring of pixels: it works for dark-on-light and light-on-dark
    and for digits that touch an edge. Paper noise (a photo's grain) is cut off with a robust spread.
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if np.median(border) > 0.5:  # light paper: make the digit white on black like MNIST
        gray, border = 1 - gray, 1 - border
    paper = float(np.median(border))
    floor = paper + NOISE_MADS * 1.4826 * float(np.median(np.abs(border - paper)))
    top = float(gray.max())
    if top - paper < MIN_CONTRAST:
        raise ImageError("blank image: no ink found (the picture is one uniform colour)")
    if top <= floor:  # the paper varies as much as the brightest mark: noise, or ink lost in it
        raise ImageError("no digit found: nothing stands out from the background's noise (random pixels?)")
    return np.clip((gray - floor) / (top - floor), 0, 1)


def scale_to_box(digit: np.ndarray) -> np.ndarray:
    """Scale so the longer side is 20 px, keeping the aspect ratio; Lanczos is anti-aliased when shrinking."""
    from PIL import Image

    height, width = digit.shape
    factor = BOX / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    scaled = Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    scaled = np.clip(np.asarray(scaled, dtype=np.float32), 0, 1)  # Lanczos rings slightly past [0, 1]
    # Shrinking a thin pen stroke averages it with paper into grey; MNIST's strokes peak at full
    # white (max 255 in 90% of digits, 254 in the rest), so stretch the brightest pixel back to 1.
    return scaled / scaled.max()


def centre_in_frame(digit: np.ndarray) -> np.ndarray:
    """Paste into a FRAME x FRAME frame, centre of mass on MNIST's centre (whole-pixel shift, like MNIST)."""
    height, width = digit.shape
    mass = float(digit.sum())
    rows, cols = np.arange(height), np.arange(width)
    com_row = float((digit.sum(1) * rows).sum() / mass)
    com_col = float((digit.sum(0) * cols).sum() / mass)
    top = min(max(math.floor(CENTRE - com_row + 0.5), 0), FRAME - height)  # keep the whole digit in frame
    left = min(max(math.floor(CENTRE - com_col + 0.5), 0), FRAME - width)
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top : top + height, left : left + width] = digit
    return frame


def preprocess_pixels(pixels: Any) -> torch.Tensor:
    """An image that is already in MNIST form (FRAME x FRAME, white on black, in [0, 1]) -> checked tensor.

    For the web API's JSON pixels. Nothing is re-centred: to preprocess a raw drawing of that size, make it
    a PIL image and call `preprocess`.
    """
    try:
        array = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImageError(f"pixels must be a {FRAME}x{FRAME} array of numbers") from None
    if array.shape != (FRAME, FRAME):
        raise ImageError(
            f"pixels must be {FRAME}x{FRAME} (got shape {'x'.join(map(str, array.shape)) or 'scalar'})"
        )
    if not np.isfinite(array).all():
        raise ImageError("pixels must be finite numbers (found NaN or infinity)")
    if array.min() < 0 or array.max() > 1:
        raise ImageError(f"pixels must lie in [0, 1] (found {array.min():g} to {array.max():g})")
    return torch.from_numpy(array.astype(np.float32))


# ---------------------------------------------------------------- the model


def load_predictor(model: str | Path | None = None) -> tuple[LeNet, dict]:
    """The model of a run directory or .safetensors file (None: the shipped model), eval mode, CPU."""
    if model is None and not DEFAULT_MODEL.is_file():
        raise RunError(f"the shipped model is missing ({DEFAULT_MODEL}); reinstall lenet or pass --model RUN")
    return load_model(DEFAULT_MODEL if model is None else model)


@torch.no_grad()
def predict(model: LeNet, images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) images in [0, 1], H = W = SHAPE.image -> class probabilities (N, classes)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)
    model.eval()
    device = next(model.parameters()).device
    return torch.softmax(model(images.to(device, torch.float32)), dim=1).cpu()


@dataclass(frozen=True, repr=False)
class Prediction:
    image: str
    probabilities: list[float]  # one per class 0-9, fractions summing to 1

    @property
    def label(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        """The network's probability for `label` (a fraction): its own certainty, not a measured hit rate."""
        return self.probabilities[self.label]

    def __repr__(self) -> str:  # the answer and the runner-up, not ten raw floats (see .probabilities)
        (label, p), (second, q) = self.top(2)
        return f"Prediction({label} at {100 * p:.1f}%, runner-up {second} at {100 * q:.1f}%, {self.image!r})"

    def top(self, k: int = TOP_K) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(c), self.probabilities[c]) for c in order]

    def line(self) -> str:
        top = ", ".join(f"{c}: {100 * p:.1f}%" for c, p in self.top())
        return f"{self.image}: {self.label}  ({top})"

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "label": self.label,
                "top": [{"label": c, "probability": p} for c, p in self.top()]}  # fmt: skip


@dataclass(frozen=True)
class Failure:
    image: str
    error: str  # one line that starts with the image's path

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error}


def predict_files(model: LeNet, paths: list[str], save_input: Path | None = None
                  ) -> list[Prediction | Failure]:  # fmt: skip
    """One Prediction or Failure per path, in order: one bad file does not stop the others."""
    results: list[Prediction | Failure] = []
    saved: set[str] = set()
    for path in paths:
        try:
            pixels = preprocess(load_image(path))
        except ImageError as e:
            results.append(Failure(path, named(path, e)))
            continue
        if save_input is not None:
            name = f"{Path(path).stem}.{FRAME}x{FRAME}.png"
            if name in saved:  # two inputs with one file name (a/x.png, b/x.png): keep both
                name = f"{Path(path).stem}-{len(results) + 1}.{FRAME}x{FRAME}.png"
            saved.add(name)
            save_input_image(pixels, save_input / name)
        probs = predict(model, pixels.unsqueeze(0))[0]
        results.append(Prediction(path, [float(p) for p in probs]))
    return results


def save_input_image(pixels: torch.Tensor, path: Path) -> None:
    """The FRAME x FRAME image the network saw, as an 8-bit grayscale PNG."""
    from PIL import Image

    from lenet.atomic import write_atomic

    buffer = io.BytesIO()
    Image.fromarray((pixels.numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def named(name: str, error: ImageError) -> str:
    """An image's error as one line that starts with the image's name (a path, or "image 3")."""
    return str(error) if str(error).startswith(name) else f"{name}: {error}"
