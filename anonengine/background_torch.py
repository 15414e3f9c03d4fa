"""The background model on a GPU: the same model as `background.BackgroundModel`, its canvas as tensors.

On a GPU server the detector is not the limit: the CPU stages are (decode, composite, x264), and of
compositing, the pixels of the background: every frame of a moving camera resampled onto the canvas, the
running average, the regions drawn back. Here those stay on the device (`background.device: cuda`); the
geometry (the camera's motion, the canvas' placement, which frames may still be drawn) is the CPU model's
own code, unchanged: this class only overrides how pixels are stored and moved. A frame goes up once; only
the regions drawn back come down, as the CPU model gives them (uint8 NumPy), and so does what the fill of
never-seen pixels needs, now and then (mirror fill and inpainting stay on the CPU).

Resampling follows OpenCV's: bilinear and bicubic (a = -0.75) through `grid_sample`, Lanczos for a pure
shift alone, separably (a zoom or roll in Lanczos is done bicubic, as the CPU model does), zero borders; equal to the CPU model within a
few grey levels where positions fall between pixels (OpenCV rounds positions to 1/32 px and learns a
uint8 frame, here unrounded), exactly equal while the camera stands still (tests/test_background_torch.py,
on CPU tensors).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anonengine.background import (
    CHANGE_CELL_PX,
    RENDER_RESAMPLE,
    RESAMPLE,
    SOLID_GREY,
    BackgroundModel,
    Scene,
    View,
    cell_grid,
    every_nth,
    warp_interpolation,
)
from anonengine.config import BackgroundConfig
from anonengine.errors import ConfigError

LANCZOS_TAPS = torch.arange(-3, 5)  # OpenCV's INTER_LANCZOS4: 8 taps, from 3 before the position to 4 after


class TorchBackgroundModel(BackgroundModel):
    def __init__(self, cfg: BackgroundConfig, keep_frames: int = 0, device: str | torch.device = "cuda") -> None:
        super().__init__(cfg, keep_frames)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not (torch.cuda.is_available()
                                               and (self.device.index or 0) < torch.cuda.device_count()):
            raise ConfigError(f"background.device {device}: no such CUDA device here "
                              f"({torch.cuda.device_count()} visible)")

    # --- storage ------------------------------------------------------------------------------------------
    def _blank(self, canvas: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros((*canvas, 3), dtype=torch.float32, device=self.device),
                torch.zeros(canvas, dtype=torch.bool, device=self.device))

    @staticmethod
    def _zeros_like(image: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(image)

    def _any_seen(self, scene: Scene) -> bool:
        return bool(scene.seen.any())

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)

    # --- learning -----------------------------------------------------------------------------------------
    def _learn(self, frame: np.ndarray, person_mask: np.ndarray, box: tuple[int, int, int, int],
               to_box: np.ndarray | None) -> None:
        scene = self.scene
        roi = slice(box[1], box[3]), slice(box[0], box[2])
        image = self._upload(frame).float()
        free = self._upload(person_mask) == 0
        if to_box is not None:
            size = (box[2] - box[0], box[3] - box[1])
            inverse = cv2.invertAffineTransform(to_box)
            image = resample(image, inverse, size, RESAMPLE[self.cfg.resample], shift_border="replicate")
            image.clamp_(0, 255)  # as the CPU model's uint8 (or saturated float) frame
            # Outside the frame counts as not seen now, and the border blends with nothing: shrink by one.
            free = resample(free.float(), inverse, size, cv2.INTER_NEAREST) > 0.5
            free = erode3(free)
        mean, seen = scene.mean[roi], scene.seen[roi]
        learnable = free & seen
        if self._lasting is not None:
            place = (id(scene), box, None if to_box is None else to_box.tobytes())
            lasting = self._lasting_cells(image, mean, learnable, place)
            if lasting is not None:
                mean.copy_(torch.where(self._upload(lasting).bool().unsqueeze(-1), image, mean))
        learnt = learnable.unsqueeze(-1)
        mean.copy_(torch.where(learnt, mean * (1 - self.cfg.alpha) + image * self.cfg.alpha, mean))
        first_seen = free & ~seen
        if self.guarded > 0:  # the CPU model's guard, on the CPU (a successor's first frames only)
            first_seen_np = first_seen.cpu().numpy().astype(np.uint8) * np.uint8(255)
            x, y, w, h = cv2.boundingRect(first_seen_np)
            if w:
                part = slice(y, y + h), slice(x, x + w)
                free_np = free.cpu().numpy().astype(np.uint8) * np.uint8(255)
                first_seen_np[part] = self._first_seen_guarded(first_seen_np[part], free_np, part, frame.shape)
                first_seen = self._upload(first_seen_np) > 0
        mean.copy_(torch.where(first_seen.unsqueeze(-1), image, mean))
        seen |= first_seen
        self.guarded = max(0, self.guarded - 1)

    def _lasting_cells(self, image: torch.Tensor, mean: torch.Tensor, learnable: torch.Tensor, place: tuple
                       ) -> np.ndarray | None:
        if not self._lasting.stays(place):
            return None
        rows, cols = cell_grid(image.shape)
        bottom, right = rows * CHANGE_CELL_PX - image.shape[0], cols * CHANGE_CELL_PX - image.shape[1]

        def cells(pixels: torch.Tensor) -> torch.Tensor:  # h x w x c -> rows x cols x c, as `padded_for_cells`
            planes = pixels.permute(2, 0, 1).unsqueeze(0).float()
            if bottom or right:
                planes = F.pad(planes, (0, right, 0, bottom), mode="replicate")
            return F.avg_pool2d(planes, CHANGE_CELL_PX)[0].permute(1, 2, 0)

        all_learnable = cells(learnable.unsqueeze(-1))[..., 0] == 1
        frame_cells = torch.floor(cells(image) + 0.5)  # OpenCV's uint8 cell means, rounded half up
        return self._lasting_mask(frame_cells.cpu().numpy(), cells(mean).cpu().numpy(),
                                  all_learnable.cpu().numpy(), image.shape)

    def _samples(self, frame: np.ndarray, step: int, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seen = self._to_frame(view.scene.seen, cv2.INTER_NEAREST, step=step, view=view)
        mean = to_uint8(self._to_frame(view.scene.mean, cv2.INTER_NEAREST, step=step, view=view))
        return every_nth(frame, step), mean.cpu().numpy(), seen.cpu().numpy()

    def _in_light(self, mean: torch.Tensor, light: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        gain, offset = (self._upload(np.asarray(x, np.float32)) for x in light)
        return (mean * gain + offset).clamp_(0, 255)

    @staticmethod
    def _copy(image: torch.Tensor) -> torch.Tensor:
        return image.clone()

    @staticmethod
    def _every_nth(image: torch.Tensor, step: int) -> torch.Tensor:
        return image[::step, ::step]

    # --- drawing back ---------------------------------------------------------------------------------------
    @staticmethod
    def _warp_back(canvas_image: torch.Tensor, inverse: np.ndarray, size: tuple[int, int],
                   interpolation: int) -> torch.Tensor:
        if canvas_image.dtype == torch.bool:
            return resample(canvas_image.float(), inverse, size, interpolation) > 0.5
        return resample(canvas_image.float(), inverse, size, interpolation, shift_border="replicate")

    def render(self, box: tuple[int, int, int, int] | None = None, view: View | None = None,
               interpolation: int | None = None, step: int = 1, fill: bool = True) -> np.ndarray:
        if self.scene is None:
            raise RuntimeError("BackgroundModel.render() before the first update()")
        return self._drawn(box, view or self.view, interpolation, step, fill).cpu().numpy()

    def _drawn(self, box: tuple[int, int, int, int] | None, view: View, interpolation: int | None = None,
               step: int = 1, fill: bool = True) -> torch.Tensor:
        """`render`'s image, left on the device."""
        scene = view.scene
        if interpolation is None:
            interpolation = RENDER_RESAMPLE[self.cfg.resample]
        image = to_uint8(self._to_frame(scene.mean, interpolation, box, step, view))
        unseen = ~self._to_frame(scene.seen, cv2.INTER_NEAREST, box, step, view)
        if not fill:
            return torch.where(unseen.unsqueeze(-1), torch.zeros_like(image), image)
        if bool(unseen.any()):
            fill = to_uint8(self._to_frame(self._current_fill(scene), cv2.INTER_LINEAR, box, step, view))
            image = torch.where(unseen.unsqueeze(-1), fill, image)
        return image

    def blend_into(self, out: np.ndarray, box: tuple[int, int, int, int], view: View, alpha: np.ndarray) -> None:
        """The blend on the device: the frame's pixels go up and the blended ones come down, where the CPU
        model would bring the background down and blend with OpenCV (a quarter of a 1080p compositor's time
        on an H200 server). OpenCV's `blendLinear` arithmetic, in float32: the same pixels."""
        if self.scene is None:
            raise RuntimeError("BackgroundModel.blend_into() before the first update()")
        background = self._drawn(box, view).float()
        frame = self._upload(out).float()
        weight = (self._upload(alpha).float() * (1 / 255)).unsqueeze(-1)
        rest = 1 - weight
        blended = (background * weight + frame * rest) / (weight + rest + 1e-5)
        out[...] = to_uint8(blended).cpu().numpy()

    def seen_in(self, box: tuple[int, int, int, int] | None, view: View) -> np.ndarray:
        return self._to_frame(view.scene.seen, cv2.INTER_NEAREST, box, view=view).cpu().numpy().astype(np.uint8) * 255

    def _grey_like(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.full(mean.shape, SOLID_GREY, dtype=torch.uint8, device=self.device)

    def _filled_part(self, scene: Scene, part: tuple[slice, slice]) -> torch.Tensor:
        """The CPU model's fill (mirrored or inpainted on the CPU), now and then, of the part still drawn."""
        mean = to_uint8(scene.mean[part]).cpu().numpy()
        seen = scene.seen[part].cpu().numpy().astype(np.uint8) * 255
        return self._upload(self._filled(mean, seen))


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """As OpenCV's `convertScaleAbs`, which the CPU model draws with: the absolute value (Lanczos rings a few
    levels below black at sharp edges), rounded to the nearest (half to even) and saturated."""
    if image.dtype == torch.uint8:
        return image
    return image.abs().round().clamp_(0, 255).to(torch.uint8)


def erode3(mask: torch.Tensor) -> torch.Tensor:
    """OpenCV's 3x3 erosion of a boolean mask (outside the image erodes nothing)."""
    taken = (~mask).float()[None, None]
    return ~(F.max_pool2d(taken, 3, stride=1, padding=1)[0, 0] > 0)


def resample(image: torch.Tensor, inverse: np.ndarray, size: tuple[int, int], interpolation: int,
             shift_border: str = "zeros") -> torch.Tensor:
    """out(x, y) = image(inverse @ (x, y, 1)): OpenCV's `warpAffine(..., WARP_INVERSE_MAP)` to `size` (w, h),
    outside the image black; `image` HxW or HxWxC float. A pure shift in Lanczos is filtered separably, the
    image's edge repeated (`shift_border="replicate"`, as the CPU model's fast path) or black; a zoom or roll
    in Lanczos is done bicubic (`warp_interpolation`)."""
    w, h = size
    interpolation = warp_interpolation(interpolation, inverse)  # as the CPU model: Lanczos for shifts alone
    if interpolation == cv2.INTER_LANCZOS4:
        return _shift_lanczos(image, inverse[:, 2], size, shift_border)
    planar = image.permute(2, 0, 1)[None] if image.dim() == 3 else image[None, None]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=image.device),
                            torch.arange(w, dtype=torch.float64, device=image.device), indexing="ij")
    m = torch.as_tensor(inverse, dtype=torch.float64, device=image.device)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    mode = {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "bilinear", cv2.INTER_CUBIC: "bicubic"}[interpolation]
    out = F.grid_sample(planar, _grid(sx, sy, planar.shape[-2:]), mode=mode, padding_mode="zeros",
                        align_corners=True)
    return out[0].permute(1, 2, 0) if image.dim() == 3 else out[0, 0]


def _grid(sx: torch.Tensor, sy: torch.Tensor, shape) -> torch.Tensor:
    """Pixel positions as `grid_sample` takes them (align_corners: -1 and 1 are the edge pixels' centres)."""
    ih, iw = shape
    gx = sx * (2 / max(iw - 1, 1)) - 1
    gy = sy * (2 / max(ih - 1, 1)) - 1
    return torch.stack([gx, gy], dim=-1).float()[None]


def _lanczos_weights(frac: torch.Tensor) -> torch.Tensor:
    """The 8 Lanczos-4 weights of each fractional position (..., 8), normalised as OpenCV's."""
    t = frac[..., None] - LANCZOS_TAPS.to(frac.device, frac.dtype)
    weights = torch.sinc(t) * torch.sinc(t / 4)
    return weights / weights.sum(dim=-1, keepdim=True)


def _shift_lanczos(image: torch.Tensor, shift: np.ndarray, size: tuple[int, int], border: str) -> torch.Tensor:
    """out(x, y) = image(x + shift): the CPU model's separable path (`background.warp`), in float."""
    w, h = size
    offset = np.floor(shift)
    kx, ky = (_lanczos_weights(torch.tensor(float(f), dtype=torch.float64)).float().to(image.device)
              for f in shift - offset)
    # Only the window the kernel reaches (a region drawn back from a whole canvas): repeating its edges is
    # repeating the image's, where it is cut by them.
    cx0, cy0 = max(0, int(offset[0]) - 3), max(0, int(offset[1]) - 3)
    cx1, cy1 = min(image.shape[1], int(offset[0]) + w + 5), min(image.shape[0], int(offset[1]) + h + 5)
    if cx1 <= cx0 or cy1 <= cy0:
        return torch.zeros((h, w, *image.shape[2:]), dtype=image.dtype, device=image.device)
    if border == "replicate" and (cx0, cy0, cx1, cy1) != (0, 0, image.shape[1], image.shape[0]):
        return _shift_lanczos(image[cy0:cy1, cx0:cx1], shift - (cx0, cy0), size, border)
    planar = image.permute(2, 0, 1)[None] if image.dim() == 3 else image[None, None]
    c, ih, iw = planar.shape[1:]
    mode = "replicate" if border == "replicate" else "constant"
    padded = F.pad(planar, (3, 4, 3, 4), mode=mode)
    # cuDNN may round a convolution's operands to TF32 (10-bit mantissas) on Ampere and later: up to a grey
    # level off the CPU model's weights. Full float32: these convolutions are small beside the frame's upload.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        filtered = F.conv2d(padded.reshape(c, 1, ih + 7, iw + 7), ky.view(1, 1, 8, 1))
        filtered = F.conv2d(filtered, kx.view(1, 1, 1, 8)).reshape(1, c, ih, iw)
    out = torch.zeros((1, c, h, w), dtype=planar.dtype, device=planar.device)
    ox, oy = int(offset[0]), int(offset[1])
    x0, y0 = max(0, -ox), max(0, -oy)
    x1, y1 = min(w, iw - ox), min(h, ih - oy)
    if x1 > x0 and y1 > y0:
        out[..., y0:y1, x0:x1] = filtered[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]
    return out[0].permute(1, 2, 0) if image.dim() == 3 else out[0, 0]


__all__ = ["TorchBackgroundModel", "resample"]
