"""The kernels of the fused Triton step (`lenet.engines.triton_step` launches them).

A gradient program, in five stages separated by CTA barriers:

- conv1 forward, vectorised over the tile's images: the 144 pooled positions in 9 chunks of 16; each conv1
  output is 25 gathered pixels times 4 channels of FMAs (not tl.dot: 4 channels would be padded to 16),
  laid out (image, pooled position, 2x2 window, channel) so that the pool is a max over the window axis.
- conv2 forward, one image at a time: im2col rows (pooled position, window element) x 32 taps (25 real)
  gathered from scratch, one 64 x 32 x 16 tl.dot per input channel, then bias, ReLU and the pool as a
  reshape to (16, 4, 16) and a max over the window axis.
- fc, softmax cross-entropy and their backward for the whole tile, as tl.dot over its images (TILE x 256
  features x 16 classes, the padding zero); dWf, dbf and db2 are stored.
- conv2 backward, one input channel and one image at a time: dW2[:, c] += cols^T @ dZ (32 x 64 x 16),
  dcols = dZ @ W2[:, c] (64 x 16 x 32) into a zero-bordered frame, and col2im as one unmasked gather.
- conv1 backward, vectorised over images: only each window's winner gets gradient, so it is 144 positions
  x 25 taps per channel, each pooled gradient times the 5 x 5 pixels under its winner.
Pool ties go to the first maximum in row-major order, as in torch's max_pool2d backward.

Scratch, one region per program, allocated once per call (never in the step loop):
  scratch[m*T + t], float32: TILE x 576 pooled conv1 (image, channel, 12 x 12), overwritten by its gradient
                             (ReLU's gate applied) in the conv2 backward;
                             TILE x 256 pooled conv2 (image, channel*16 + position), then its gradient;
                             16 x 16 x 32 frame: dcols of one channel and image, conv2's 8 x 8 positions at
                             [4, 12) x [4, 12), the border zero (the buffer is zeroed once, at allocation).
  winners[m*T + t], int8:    TILE x 576 pool1 winners, as their offset in x (0, 1, 28, 29);
                             TILE x 256 pool2 winners (0..3).
tl.debug_barrier() (a CTA barrier on a GPU, nothing in the interpreter) orders a store to scratch before
other threads' loads of it.

On a GPU (compiled offline for sm_90, not run): 8 warps, 128 registers a thread and no or a few bytes of
spill with triton 3.6 and 3.9, 37 KB of shared memory, so two programs an SM. Every tl.dot is fp32 with
input_precision="ieee" (FMA, never TF32) and has no dimension below 16. With TRITON_INTERPRET=1 set when
this module is imported, the same kernels run on CPU tensors in Triton's interpreter (the tests).
"""

from __future__ import annotations

import os

from lenet.model import Shape

try:  # optional: lenet runs without triton, and `available` then says False
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def _jit(fn):
    """triton.jit where triton is installed; the plain function elsewhere (never launched there)."""
    return triton.jit(fn) if triton is not None else fn


def _constexpr(value: int):
    """A constant the kernels may read (triton accepts only constexpr globals in a kernel)."""
    return tl.constexpr(value) if tl is not None else value


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # at import: when triton.jit decorates the kernels
KERNEL_SHAPE = Shape()  # the network the kernels compute; lenet.model.SHAPE must be this one
TILE = 16  # images per gradient program (a power of 2, at least 16: it is dWf's tl.dot depth)
UPDATE_BLOCK = 512  # parameters per update program
GRADIENT_WARPS = 8  # 128 registers a thread, two programs an SM (with 4 warps: 255 registers)
PARAMS = KERNEL_SHAPE.parameter_count()  # 3,246 floats per gradient
POOLED = KERNEL_SHAPE.conv1 * (KERNEL_SHAPE.conv1_side // KERNEL_SHAPE.pool) ** 2  # 576 per image
FEATURES = 256  # pooled conv2 per image: channel*16 + position, channels padded to 16
FRAME = 16 * 16 * 32  # dcols of one input channel: conv2's 8 x 8 positions in a zero border of 4, 32 taps

# Where each parameter starts in a flattened gradient (the model's order).
W1_AT, B1_AT, W2_AT, B2_AT, WF_AT, BF_AT = 0, 100, 104, 1304, 1316, 3236

_PARAMS, _POOLED = _constexpr(PARAMS), _constexpr(POOLED)
_FEATURES, _FRAME = _constexpr(FEATURES), _constexpr(FRAME)
_W1_AT, _B1_AT, _W2_AT = _constexpr(W1_AT), _constexpr(B1_AT), _constexpr(W2_AT)
_B2_AT, _WF_AT, _BF_AT = _constexpr(B2_AT), _constexpr(WF_AT), _constexpr(BF_AT)


# ---------------------------------------------------------------- the gradient kernel


@_jit
def gradient_kernel(
    x_ptr, y_ptr, batches_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wf_ptr, bf_ptr,
    partial_ptr, tile_loss_ptr, scratch_ptr, winners_ptr, step, steps, batch,
    TILE: tl.constexpr,
):  # fmt: skip
    """Program (m, t): the gradient and summed loss of tile t of model m's batch at `step`."""
    m = tl.program_id(0)
    t = tl.program_id(1)
    program = m.to(tl.int64) * tl.num_programs(1) + t
    first = batches_ptr + (m.to(tl.int64) * steps + step) * batch + t * TILE  # the tile's indices
    count = tl.minimum(batch - t * TILE, TILE)
    pooled = scratch_ptr + program * (TILE * (_POOLED + _FEATURES) + _FRAME)
    feats = pooled + TILE * _POOLED
    frame = feats + TILE * _FEATURES
    winners1 = winners_ptr + program * (TILE * (_POOLED + _FEATURES))
    winners2 = winners1 + TILE * _POOLED
    w1, b1 = w1_ptr + m * 100, b1_ptr + m * 4
    w2, b2 = w2_ptr + m * 1200, b2_ptr + m * 12
    wf, bf = wf_ptr + m * 1920, bf_ptr + m * 10
    grad = partial_ptr + program * _PARAMS

    _conv1_forward(x_ptr, first, count, w1, b1, pooled, winners1, TILE)
    tl.debug_barrier()
    _conv2_forward(count, w2, b2, pooled, feats, winners2, TILE)
    tl.debug_barrier()
    loss = _fc(y_ptr, first, count, wf, bf, feats, grad, batch, TILE)
    tl.debug_barrier()
    _conv2_backward(count, w2, pooled, feats, winners2, frame, grad, TILE)
    tl.debug_barrier()
    _conv1_backward(x_ptr, first, count, pooled, winners1, grad, TILE)
    tl.store(tile_loss_ptr + program, loss)


@_jit
def _image_rows(first, count, TILE: tl.constexpr):
    """The tile's images as offsets into x (TILE,), and which of them exist."""
    img = tl.arange(0, TILE)
    real = img < count
    return tl.load(first + img, mask=real, other=0) * 784, real


@_jit
def _conv1_forward(x_ptr, first, count, w1, b1, pooled, winners1, TILE: tl.constexpr):
    """conv1 + bias, ReLU and the 2x2 max-pool of the tile's images -> scratch: the pooled activations
    (image, channel, 12 x 12) and where each window's winner lies in it, as an offset in x."""
    rows, real = _image_rows(first, count, TILE)
    img = tl.arange(0, TILE)
    win = tl.arange(0, 4)
    shift = (win // 2) * 28 + win % 2  # window element dy*2 + dx as an offset in x: 0, 1, 28, 29
    chan = tl.arange(0, 4)
    weights = (w1 + chan * 25)[None, None, None, :]
    bias = tl.load(b1 + chan)[None, None, None, :]
    for chunk in range(9):
        q = chunk * 16 + tl.arange(0, 16)  # pooled positions, 12 x 12 flattened
        corner = (q // 12) * 56 + (q % 12) * 2
        at = x_ptr + (rows[:, None, None] + (corner[:, None] + shift[None, :])[None, :, :])[:, :, :, None]
        acc = tl.zeros((TILE, 16, 4, 4), dtype=tl.float32)  # (image, position, window, channel)
        for tap in tl.static_range(25):
            pixel = tl.load(at + (tap // 5 * 28 + tap % 5), mask=real[:, None, None, None], other=0.0)
            acc += pixel * tl.load(weights + tap)
        act = tl.maximum(acc + bias, 0.0)
        best = tl.max(act, axis=2)  # (TILE, 16, 4 channels)
        # the first maximum in row-major order, as torch's backward takes: shifts grow with the element
        winner = tl.min(tl.where(act == best[:, :, None, :], shift[None, None, :, None], 99), axis=2)
        out = img[:, None, None] * 576 + chan[None, None, :] * 144 + q[None, :, None]
        tl.store(pooled + out, best)
        tl.store(winners1 + out, winner.to(tl.int8))


@_jit
def _im2col():
    """conv2's im2col for one input channel: offsets into its pooled 12 x 12 (64 rows, 32 taps), and which
    columns are taps (25 of 32). Row r = (pooled conv2 position q, window w) = q*4 + w, so that a reshape
    to (16, 4, 16) puts each 2x2 pool window on an axis."""
    r = tl.arange(0, 64)
    top = 2 * (r // 16) + (r % 4) // 2
    left = 2 * ((r // 4) % 4) + r % 2
    tap = tl.arange(0, 32)
    return (top * 12 + left)[:, None] + ((tap // 5) * 12 + tap % 5)[None, :], tap < 25


@_jit
def _conv2_weights(w2, c):
    """W2[:, c] as (tap, out channel), (32, 16), zero in the padding."""
    tap = tl.arange(0, 32)
    out = tl.arange(0, 16)
    at = out[None, :] * 100 + c * 25 + tap[:, None]
    return tl.load(w2 + at, mask=(tap < 25)[:, None] & (out < 12)[None, :], other=0.0)


@_jit
def _conv2_forward(count, w2, b2, pooled, feats, winners2, TILE: tl.constexpr):
    """conv2 + bias, ReLU and the 2x2 max-pool, one image at a time (one 64 x 32 x 16 tl.dot per input
    channel) -> scratch: the pooled features (image, channel*16 + position: the fc layer's order, channels
    padded to 16) and each window's winner (0..3)."""
    cols_at, is_tap = _im2col()
    out = tl.arange(0, 16)
    bias = tl.load(b2 + out, mask=out < 12, other=0.0)[None, :]
    at = out[None, :] * 16 + tl.arange(0, 16)[:, None]  # (position, channel)
    for b in range(TILE):  # a static trip count: the 3.6 interpreter cannot loop to a tensor
        if b < count:
            z = tl.zeros((64, 16), dtype=tl.float32)
            for c in tl.static_range(4):
                cols = tl.load(pooled + b * 576 + c * 144 + cols_at, mask=is_tap[None, :], other=0.0)
                z = tl.dot(cols, _conv2_weights(w2, c), z, input_precision="ieee")
            act = tl.maximum(tl.reshape(z + bias, (16, 4, 16)), 0.0)  # (position, window, channel)
            feat = tl.max(act, axis=1)
            winner = tl.min(tl.where(act == feat[:, None, :], tl.arange(0, 4)[None, :, None], 4), axis=1)
            tl.store(feats + b * 256 + at, feat)
            tl.store(winners2 + b * 256 + at, winner.to(tl.int8))


@_jit
def _fc(y_ptr, first, count, wf, bf, feats, grad, batch, TILE: tl.constexpr):
    """The fc layer, softmax cross-entropy and their backward for the whole tile (tl.dot over its images).

    Stores dWf, dbf and db2 into `grad` and returns the tile's summed loss; the gradient of the pooled conv2
    features, ReLU's gate applied, overwrites them in scratch."""
    img = tl.arange(0, TILE)
    real = img < count
    f = tl.arange(0, 256)  # channel*16 + position, 192 real
    cls = tl.arange(0, 16)  # 10 real
    at = img[:, None] * 256 + f[None, :]
    feat = tl.load(feats + at, mask=real[:, None], other=0.0)  # (TILE, 256)
    fc_at = cls[:, None] * 192 + f[None, :]
    fc_mask = (cls < 10)[:, None] & (f < 192)[None, :]
    weights = tl.load(wf + fc_at, mask=fc_mask, other=0.0)  # (16, 256)
    logits = tl.dot(feat, tl.trans(weights), input_precision="ieee")
    label = tl.load(y_ptr + tl.load(first + img, mask=real, other=0), mask=real, other=0)
    dlogits, loss = _softmax_loss(logits + tl.load(bf + cls, mask=cls < 10, other=0.0)[None, :], label)
    dlogits = tl.where(real[:, None], dlogits / batch, 0.0)  # (TILE, 16)
    dfeat = tl.where(feat > 0, tl.dot(dlogits, weights, input_precision="ieee"), 0.0)  # (TILE, 256)
    tl.store(feats + at, dfeat)
    tl.store(grad + _WF_AT + fc_at, tl.dot(tl.trans(dlogits), feat, input_precision="ieee"), mask=fc_mask)
    tl.store(grad + _BF_AT + cls, tl.sum(dlogits, axis=0), mask=cls < 10)
    db2 = tl.sum(tl.reshape(tl.sum(dfeat, axis=0), (16, 16)), axis=1)  # each pooled gradient reaches one z
    tl.store(grad + _B2_AT + cls, db2, mask=cls < 12)
    return tl.sum(tl.sum(tl.where(real[:, None], loss, 0.0), axis=1), axis=0)


@_jit
def _softmax_loss(logits, label):
    """Cross-entropy of rows of 16 padded logits (10 real) -> (its gradient, the loss in the label column)."""
    cls = tl.arange(0, 16)[None, :]
    logits = tl.where(cls < 10, logits, float("-inf"))
    top = tl.max(logits, axis=1)[:, None]
    lse = top + tl.log(tl.sum(tl.exp(logits - top), axis=1))[:, None]
    hit = cls == label[:, None]
    grad = tl.where(cls < 10, tl.exp(logits - lse) - hit.to(tl.float32), 0.0)
    return grad, tl.where(hit, lse - logits, 0.0)


@_jit
def _conv2_backward(count, w2, pooled, feats, winners2, frame, grad, TILE: tl.constexpr):
    """conv2's backward, one input channel and one image at a time: dW2[:, c] of the tile (cols^T @ dZ,
    32 x 64 x 16) into `grad`; dcols = dZ @ W2[:, c] (64 x 16 x 32) through scratch and col2im to the
    gradient of pooled conv1, which, ReLU's gate applied, overwrites channel c of the activations."""
    cols_at, is_tap = _im2col()
    at = tl.arange(0, 16)[None, :] * 16 + tl.arange(0, 16)[:, None]  # (position, channel)
    r = tl.arange(0, 64)  # (position, window), as in _im2col
    cell = (2 * (r // 16) + (r % 4) // 2 + 4) * 16 + 2 * ((r // 4) % 4) + r % 2 + 4
    frame_at = cell[:, None] * 32 + tl.arange(0, 32)[None, :]
    tap = tl.arange(0, 32)[:, None]
    out = tl.arange(0, 16)[None, :]
    for c in range(4):
        weights = tl.trans(_conv2_weights(w2, c))  # (16, 32)
        dw2 = tl.zeros((32, 16), dtype=tl.float32)
        for b in range(TILE):
            if b < count:
                dfeat = tl.load(feats + b * 256 + at)
                winner = tl.load(winners2 + b * 256 + at).to(tl.int32)
                back = tl.arange(0, 4)[None, :, None] == winner[:, None, :]
                dz = tl.reshape(tl.where(back, dfeat[:, None, :], 0.0), (64, 16))  # through the pool
                channel = pooled + b * 576 + c * 144
                cols = tl.load(channel + cols_at, mask=is_tap[None, :], other=0.0)  # (64, 32)
                dw2 = tl.dot(tl.trans(cols), dz, dw2, input_precision="ieee")
                tl.store(frame + frame_at, tl.dot(dz, weights, input_precision="ieee"))
                tl.debug_barrier()
                _col2im(channel, frame)
                tl.debug_barrier()  # the next image overwrites the frame
        tl.store(grad + _W2_AT + out * 100 + c * 25 + tap, dw2, mask=(tap < 25) & (out < 12))


@_jit
def _col2im(channel, frame):
    """Sum dcols, held in a zero-bordered frame, back onto the 12 x 12 pooled grid of one channel: d(pooled
    conv1), times its ReLU's gate, overwrites that channel's activations.

    Pooled position (py, px) gets, through tap (ky, kx), row (py - ky, px - kx) of dcols: frame cell
    (py - ky + 4, px - kx + 4), zero outside the 8 x 8 rows, so the gather needs no mask."""
    py = tl.arange(0, 16)[:, None]
    px = tl.arange(0, 16)[None, :]
    tap = tl.arange(0, 32)
    shift = tl.where(tap < 25, (4 - tap // 5) * 16 + 4 - tap % 5, 4 * 16 + 4) * 32 + tap  # padding: zeros
    grid = (py < 12) & (px < 12)
    cell = (py * 16 + px) * 32
    total = tl.sum(tl.load(frame + cell[:, :, None] + shift[None, None, :], mask=grid[:, :, None]), axis=2)
    at = channel + py * 12 + px
    act = tl.load(at, mask=grid, other=0.0)
    tl.store(at, tl.where(act > 0, total, 0.0), mask=grid)


@_jit
def _conv1_backward(x_ptr, first, count, pooled, winners1, grad, TILE: tl.constexpr):
    """dW1 and db1 of the tile into `grad`: each pooled gradient times the 5 x 5 patch under its window's
    winner (144 positions x 25 taps a channel, not 576 x 25)."""
    rows, real = _image_rows(first, count, TILE)
    img = tl.arange(0, TILE)
    tap = tl.arange(0, 32)
    patch = ((tap // 5) * 28 + tap % 5)[None, None, :]
    seen = real[:, None, None] & (tap < 25)[None, None, :]
    for c in range(4):
        dw1 = tl.zeros((32,), dtype=tl.float32)
        db1 = tl.zeros((16,), dtype=tl.float32)
        for chunk in range(9):
            q = chunk * 16 + tl.arange(0, 16)
            at = img[:, None] * 576 + c * 144 + q[None, :]  # (TILE, 16)
            dpool = tl.load(pooled + at, mask=real[:, None], other=0.0)
            corner = rows[:, None] + ((q // 12) * 56 + (q % 12) * 2)[None, :]
            corner += tl.load(winners1 + at, mask=real[:, None], other=0).to(tl.int64)
            pixels = tl.load(x_ptr + corner[:, :, None] + patch, mask=seen, other=0.0)  # (TILE, 16, 32)
            dw1 += tl.sum(tl.sum(dpool[:, :, None] * pixels, axis=0), axis=0)
            db1 += tl.sum(dpool, axis=0)
        tl.store(grad + _W1_AT + c * 25 + tap, dw1, mask=tap < 25)
        tl.store(grad + _B1_AT + c, tl.sum(db1, axis=0))


# ---------------------------------------------------------------- the update kernel


@_jit
def update_kernel(
    partial_ptr, tile_loss_ptr, total_ptr, lrs_ptr, w1, b1, w2, b2, wf, bf, inv_batch,
    TILES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (m, block): sum the block's gradient entries over the tiles, in order, and step those
    parameters. TILES is a constant (one compile per batch size): triton 3.6's interpreter cannot loop to a
    tensor bound."""
    m = tl.program_id(0)
    block = tl.program_id(1)
    i = block * BLOCK + tl.arange(0, BLOCK)
    inside = i < _PARAMS
    rows = partial_ptr + m.to(tl.int64) * TILES * _PARAMS
    grad = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in range(TILES):
        grad += tl.load(rows + t * _PARAMS + i, mask=inside, other=0.0)
    lr = tl.load(lrs_ptr + m)
    _descend(w1, m, i, grad, lr, _W1_AT, 100)
    _descend(b1, m, i, grad, lr, _B1_AT, 4)
    _descend(w2, m, i, grad, lr, _W2_AT, 1200)
    _descend(b2, m, i, grad, lr, _B2_AT, 12)
    _descend(wf, m, i, grad, lr, _WF_AT, 1920)
    _descend(bf, m, i, grad, lr, _BF_AT, 10)
    loss = tl.load(tile_loss_ptr + m * TILES)
    for t in range(1, TILES):
        loss += tl.load(tile_loss_ptr + m * TILES + t)
    tl.store(total_ptr + m, tl.load(total_ptr + m) + loss * inv_batch, mask=block == 0)


@_jit
def _descend(p_ptr, m, i, grad, lr, START: tl.constexpr, SIZE: tl.constexpr):
    """p -= lr * grad for the entries of `i` that belong to this parameter (flat [START, START + SIZE))."""
    mine = (i >= START) & (i < START + SIZE)
    at = p_ptr + m * SIZE + (i - START)
    tl.store(at, tl.load(at, mask=mine, other=0.0) - lr * grad, mask=mine)
