"""Per-example loss-gradient norms, per layer, and the penultimate features of a trained model: the
query stage's white-box signals (lira/stages/query.py, --whitebox) and the norms DP-SGD's ghost
clipping scales each example by (lira/training/dpsgd.py, `per_example_norms`).

For every pool example and inference query (the views of lira/run/views.py), the gradient
of that one view's cross-entropy with respect to the model's parameters, BatchNorm in inference
mode (the forward of step.predict), reduced to its L2 norm per layer and over all parameters;
and the penultimate activations, the input of the classification head, which the models of
lira/training/models.py sow as ("intermediates", "features").

Layers are the top-level entries of `params` (`layer_names`): every parameter array under one
top-level submodule belongs to its layer, so a WideResNetBlock_k is one layer (its convolutions,
shortcut projection and BatchNorm scales and offsets together), and the WRN's final BatchNorm_0
another. A parameter declared on the root module itself is a layer of its own.

How. The per-example gradients of the layers that `find_taps` recognises (flax's nn.Dense and
lira's Conv, at any depth, each called once) are never formed. Each view's loss is differentiated
(jax.vmap(jax.grad(...)) over the views of a call: the batched backward pass, less its weight
gradients) with respect to each such layer's linear output y, a zero added there with
flax.linen.intercept_methods (for a Conv at Conv.tap, before its bias, pooling and ReLU), and the
layer's input x is kept. With the layer as a convolution of the padded input (a Dense: a 1x1 one
over its positions), the view's kernel gradient is sum_p patch_p g_p^T over the P output
positions, g_p the loss gradient w.r.t. y there and patch_p [K] the input window p reads, and its
bias gradient sum_p g_p. The squared norm of the kernel gradient is taken from its kh x kw blocks
of I x O, each the product of a window of x and g (P K O multiply-adds), or, when fewer, as the
"ghost norm" sum_{p,q} (patch_p . patch_q)(g_p . g_q) (Li et al. 2022: P^2 O, and P~^2 I for the
patch products, summed from the Gram matrix of the P~ padded input pixels), which for a Dense on
one position is ||x||^2 ||g||^2. Every other parameter (the WRN's BatchNorm scales and offsets, a
user's layer of another kind or inside nn.remat, a layer called twice) gets its gradient per view
from the same jax.grad, and its norm from that. The values are those of per-example gradients up
to float32 rounding (tests/test_whitebox.py checks them against single-example jax.grad calls).

Memory: B * Q (times the models of a vmapped call) views are alive at once in a call, each with
its activations, each tapped layer's input and output gradient and a gradient of each untapped
parameter (`view_floats` counts these); the norms' own buffers are a few views' at a time on the
CPU. Only the norms and the features leave the function; the caller sizes B.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import tracers
from jax import lax

from lira.training import augment, layers, step

FEATURES = "features"  # the name models sow their penultimate activations under, in "intermediates"


def layer_names(params) -> list[str]:
    """The layers of `params`: its top-level keys, sorted by module type then index
    ('Conv_0', 'Conv_1', 'Dense_0', ..., 'WideResNetBlock_2', 'WideResNetBlock_10').

    The order depends on the names alone, not on the dict's order, which jax.tree.map and
    checkpoint restores change (to lexicographic, which puts block 10 before block 2)."""

    def key(name: str):
        match = re.fullmatch(r"(.*?)_?(\d+)", name)
        return (match[1], int(match[2]), name) if match else (name, -1, name)

    return sorted(params, key=key)


def _features(intermediates, dtype=jnp.float32):
    """Everything sown under FEATURES (at any depth), one example's, flattened -> [F]."""
    leaves = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
        if any(getattr(entry, "key", None) == FEATURES for entry in path)
    ]
    if not leaves:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([leaf.reshape(-1).astype(dtype) for leaf in leaves])


@dataclasses.dataclass(frozen=True)
class _Tap:
    """A layer whose gradient norms come from its input x and the loss gradient w.r.t. its output
    y, seen as a SAME convolution of one view's x as an image [H, W, I] (a Dense as a 1x1
    convolution of its P positions, [P, 1, I])."""

    method: str  # the method intercepted: "__call__" of an nn.Dense, "tap" of a layers.Conv
    kernel: tuple[int, ...]  # the kernel parameter's shape: [I, O] (Dense) or [kh, kw, I, O] (Conv)
    image: tuple[int, int, int]  # (H, W, I)
    window: tuple[int, int]  # (kh, kw)
    strides: tuple[int, int]
    output: jax.ShapeDtypeStruct  # one view's y: [1, ..., O], or [1, H/2, W/2, 4, O] (space-to-depth)

    def pads(self):
        return lax.padtype_to_pads(self.image[:2], self.window, self.strides, "SAME")

    def out_hw(self) -> tuple[int, int]:
        return tuple(-(-size // stride) for size, stride in zip(self.image[:2], self.strides))

    def ghost(self) -> bool:
        """Whether the kernel gradient's squared norm is cheaper as the ghost norm, from the P~ x P~
        Gram matrix of the padded input's pixels and the P x P one of the output gradients
        (P~^2 I + P^2 O multiply-adds), than from the K x O gradient (P K O, K = kh kw I)."""
        (h, w, i), (kh, kw), o = self.image, self.window, self.kernel[-1]
        (top, bottom), (left, right) = self.pads()
        padded, positions = (h + top + bottom) * (w + left + right), math.prod(self.out_hw())
        return padded**2 * i + positions**2 * o < positions * kh * kw * i * o


def _tapped_method(module: nn.Module) -> str | None:
    """The method whose input and output give `module`'s gradient norms, None if none does. Exact
    types only: a subclass may compute something else; so may a Dense with its own dot_general."""
    if type(module) is layers.Conv:
        return "tap"
    if type(module) is nn.Dense and module.dot_general is None and module.dot_general_cls is None:
        return "__call__"
    return None


def _apply(model: nn.Module, variables, view):
    """One view [...] -> (logits [1, C], intermediates), BatchNorm in inference mode."""
    logits, sown = model.apply(variables, view[None], train=False, mutable=["intermediates"])
    return logits, sown.get("intermediates", {})


def find_taps(model: nn.Module, variables, view) -> dict[tuple[str, ...], _Tap]:
    """{module path: _Tap} for the layers of `model` whose norms come from their outputs' gradient:
    those _tapped_method recognises, called once per forward pass, and whose parameters are
    exactly a kernel of the shape that input and output imply and maybe a bias [O]. Traces the
    model on shapes only (variables as step.predict takes them, view [...])."""
    calls, found, outer = collections.Counter(), {}, []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == _tapped_method(module):
            calls[module.path] += 1
            # Inside a lifted transform (nn.remat, nn.scan, ...) the layer runs under a trace of
            # its own, from which its input could not be handed out: left to per-view gradients.
            if args and not kwargs and tracers.current_trace() == outer[0]:
                x, output = args[0], jax.ShapeDtypeStruct(out.shape, out.dtype)
                if type(module) is layers.Conv:
                    window = tuple(module.kernel_size)
                    tap = _Tap("tap", (*window, x.shape[-1], out.shape[-1]), x.shape[1:], window,
                               tuple(module.strides), output)  # fmt: skip
                else:
                    image = (math.prod(x.shape[:-1]), 1, x.shape[-1])
                    tap = _Tap("__call__", (x.shape[-1], out.shape[-1]), image, (1, 1), (1, 1), output)
                found[module.path] = tap
        return out

    def trace(variables, view):
        outer.append(tracers.current_trace())
        with nn.intercept_methods(record):
            return _apply(model, variables, view)

    jax.eval_shape(trace, *jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), (variables, view)))
    owned = collections.defaultdict(dict)  # module path -> {parameter name: shape}
    for key, leaf in traverse_util.flatten_dict(variables["params"]).items():
        owned[key[:-1]][key[-1]] = leaf.shape
    return {
        path: tap
        for path, tap in found.items()
        if calls[path] == 1
        and owned[path] in ({"kernel": tap.kernel}, {"kernel": tap.kernel, "bias": tap.kernel[-1:]})
    }


def view_floats(model: nn.Module, variables, sample) -> int:
    """About how many floats make_whitebox_fn holds per view (one model's) at its peak, to size
    its calls: the gradient of every parameter not tapped, and each tapped layer's input and the
    loss gradient w.r.t. its output (the norms' own buffers are a few views' at a time). variables
    as step.predict takes them (arrays or shapes), sample [...] one example."""
    taps = find_taps(model, variables, sample)
    params = traverse_util.flatten_dict(variables["params"])
    untapped = sum(math.prod(leaf.shape) for key, leaf in params.items() if key[:-1] not in taps)
    return untapped + sum(math.prod(tap.image) + math.prod(tap.output.shape) for tap in taps.values())


def _tap_squares(tap: _Tap, x, grad):
    """(kernel, bias): the squared norms of one view's kernel and bias gradients, float32 [], from
    the layer's input x and the loss gradient w.r.t. its output y (shaped as tap.output).

    With the layer as a convolution (_Tap) of the zero-padded input xp [H~, W~, I], the
    kernel gradient is sum_p patch_p g_p^T over the output positions p, patch_p the kh x kw window
    that p reads. Neither it nor the im2col patch matrix is formed when the ghost norm is cheaper:
    sum_{p,q} (patch_p . patch_q)(g_p . g_q), the first factor summed from the Gram matrix of xp's
    pixels over the kh kw taps. Otherwise its I x O block for each tap (i, j) is the product of
    the input window that tap reads, [H' W', I], and g; the patch matrix is not formed either."""
    (kh, kw), (sh, sw), (oh, ow) = tap.window, tap.strides, tap.out_hw()
    if grad.ndim == 5:  # the space-to-depth path's 2x2 output blocks, back to [1, H, W, O]
        grad = layers._from_blocks(grad)
    g = grad.reshape(oh, ow, -1).astype(jnp.float32)
    xp = jnp.pad(x.reshape(tap.image).astype(jnp.float32), (*tap.pads(), (0, 0)))
    reads = [  # the rows and columns of xp that each kernel tap reads, H' and W' of them
        (slice(di, di + (oh - 1) * sh + 1, sh), slice(dj, dj + (ow - 1) * sw + 1, sw))
        for di in range(kh)
        for dj in range(kw)
    ]
    dot = functools.partial(jnp.einsum, precision=lax.Precision.HIGHEST)
    if tap.ghost():
        pixels = dot("abi,cdi->abcd", xp, xp)  # [H~, W~, H~, W~]
        patches = sum(pixels[rows, cols, rows, cols] for rows, cols in reads)  # [H', W', H', W']
        kernel = jnp.sum(patches * dot("abo,cdo->abcd", g, g))
    else:
        kernel = sum(jnp.sum(jnp.square(dot("abi,abo->io", xp[rows, cols], g))) for rows, cols in reads)
    return kernel, jnp.sum(jnp.square(g.sum((0, 1))))


def _view_gradients(model: nn.Module, taps, state, view, label):
    """One view [...], label [] -> ({parameter key: its squared gradient norm, []} for the
    parameters not tapped, {tap path: the layer's input x}, {tap path: the loss gradient w.r.t. its
    output y}, the sown features [F])."""
    params = traverse_util.flatten_dict(state.params)  # {(module path..., name): array}
    untapped = {key: leaf for key, leaf in params.items() if key[:-1] not in taps}

    def loss(untapped, perturbations):
        variables = {
            "params": traverse_util.unflatten_dict({**params, **untapped}),
            "batch_stats": state.batch_stats,
        }
        inputs = {}

        def perturb(next_fun, args, kwargs, context):  # y + 0 at each tap, its input kept
            out = next_fun(*args, **kwargs)
            path = context.module.path
            if path not in taps or context.method_name != taps[path].method:
                return out
            inputs[path] = args[0]
            return out + perturbations[path]

        with nn.intercept_methods(perturb):
            logits, intermediates = _apply(model, variables, view)
        return step.cross_entropy(logits, label[None])[0], (inputs, intermediates)

    zeros = {path: jnp.zeros(tap.output.shape, tap.output.dtype) for path, tap in taps.items()}
    (grads, out_grads), (inputs, intermediates) = jax.grad(loss, (0, 1), has_aux=True)(untapped, zeros)
    squares = {key: jnp.sum(jnp.square(g.astype(jnp.float32))) for key, g in grads.items()}
    return squares, inputs, out_grads, _features(intermediates)


def _gradients(model: nn.Module, num_queries: int, taps, state, images, labels):
    """_view_gradients of one model for every query of images [B, ...], labels [B]: each output
    with a leading axis of the B * Q views, example-major."""
    views = augment.make_queries(images, num_queries)
    flat = views.reshape(-1, *views.shape[2:])
    one_view = functools.partial(_view_gradients, model, taps)
    return jax.vmap(one_view, in_axes=(None, 0, 0))(state, flat, jnp.repeat(labels, views.shape[1]))


# The tapped layers' norms are computed this many views at a time on the CPU (a loop over the views
# of a call), so that their buffers stay in the cache (measured on cnn32:
# docs/results/implementation_choices/README.md). Elsewhere all at once: a loop of small steps
# would leave an accelerator idle.
CPU_VIEWS_PER_STEP = 16


def _map_views(f, views, per_step: int):
    """jax.vmap(f)(views), views a pytree of arrays [V, ...], computed per_step views at a time in
    a loop. Its last step's views are clamped into range, as lax.dynamic_slice clamps, so that it
    recomputes a few views rather than needing a second program for the remainder (which
    lax.map(batch_size=...) compiles; its cost: docs/results/implementation_choices/README.md)."""
    num_views = len(jax.tree.leaves(views)[0])
    mapped = jax.vmap(f)
    first = jax.tree.map(lambda a: a[:per_step], views)
    out = jax.tree.map(lambda r: jnp.zeros((num_views, *r.shape[1:]), r.dtype), jax.eval_shape(mapped, first))

    def body(i, out):
        start = jnp.minimum(i * per_step, num_views - per_step)
        step = mapped(jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, per_step), views))
        return jax.tree.map(lambda o, r: lax.dynamic_update_slice_in_dim(o, r, start, 0), out, step)

    return lax.fori_loop(0, -(-num_views // per_step), body, out)


def _norms(taps, params, squares, inputs, out_grads):
    """float32 [V, L + 1]: the gradient norm of each of V views per layer of layer_names(params)
    (arrays or shapes), then over all; squares {parameter key: [V]} for the parameters not
    tapped, inputs and out_grads {tap path: [V, ...]} as _view_gradients gives them."""
    keys = traverse_util.flatten_dict(params)

    def tapped(view):  # one view's (inputs, out_grads) -> {parameter key: []}
        out = {}
        for path, tap in taps.items():
            out[(*path, "kernel")], bias = _tap_squares(tap, view[0][path], view[1][path])
            if (*path, "bias") in keys:
                out[(*path, "bias")] = bias
        return out

    if taps:
        num_views = len(jax.tree.leaves(inputs)[0])
        per_step = min(num_views, CPU_VIEWS_PER_STEP) if jax.default_backend() == "cpu" else num_views
        squares = {**squares, **_map_views(tapped, (inputs, out_grads), per_step)}
    per_layer = [sum(v for key, v in squares.items() if key[0] == name) for name in layer_names(params)]
    per_layer = jnp.stack(per_layer, -1)
    return jnp.sqrt(jnp.concatenate([per_layer, per_layer.sum(-1, keepdims=True)], -1))


def _signals(taps, params, outputs, leading: tuple[int, ...]):
    """(norms float32 [*leading, Q, L + 1], features float32 [*leading, Q, F]) from _gradients'
    outputs over prod(leading) * Q views, in that order (example-major, query last)."""
    squares, inputs, out_grads, features = outputs
    norms = _norms(taps, params, squares, inputs, out_grads)
    shape = (*leading, len(norms) // math.prod(leading))
    return norms.reshape(*shape, norms.shape[-1]), features.reshape(*shape, features.shape[-1])


def _variables(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def make_whitebox_fn(model: nn.Module, num_queries: int):
    """fn(state, images, labels) -> (norms, features) for one model.

    images [B, ...] raw pool examples (the queries are made here, as the logits query stage makes
    them), labels int [B] -> norms float32 [B, Q, L + 1]: the gradient norm of each view's loss per
    layer of layer_names(state.params), then over all parameters; features float32 [B, Q, F]: the
    sown penultimate activations of each view (F = 0 for a model that sows none).
    """

    def fn(state, images, labels):
        taps = find_taps(model, _variables(state), images[0])
        outputs = _gradients(model, num_queries, taps, state, images, labels)
        return _signals(taps, state.params, outputs, (len(images),))

    return fn


def make_vmapped_whitebox_fn(model: nn.Module, num_queries: int):
    """Jitted fn(state, images, labels) for a state stacked over M models -> (norms float32
    [M, B, Q, L + 1], features float32 [M, B, Q, F]); images and labels as make_whitebox_fn's.

    The gradients are vmapped over the models, the tapped layers' norms then taken over the M B Q
    views together. The images are broadcast over the model axis first: with a state sharded
    over the model mesh (as restored), JAX 0.10 has no vmap rule for the per-example weight
    gradient of a first convolution left to per-view gradients when its input is shared by the
    models (NotImplementedError in the conv batching rule, cf. jax-ml/jax#32157); a per-model
    input takes the rule that exists, same values.
    """

    def mapped(state, images, labels):
        num_models = jax.tree.leaves(state)[0].shape[0]
        one = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), state)
        taps = find_taps(model, _variables(one), images[0])
        gradients = step.vmap_models(functools.partial(_gradients, model, num_queries, taps), (0, 0, None))
        outputs = gradients(state, jnp.broadcast_to(images, (num_models, *images.shape)), labels)
        outputs = jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:]), outputs)
        return _signals(taps, one.params, outputs, (num_models, len(images)))

    return jax.jit(mapped)


def whitebox_shapes(model: nn.Module, sample_image) -> tuple[list[str], int]:
    """(layer names, F) for `model` on examples shaped like sample_image [...], without computing
    anything: norms have len(names) + 1 columns, features F. The same for every query count."""
    _, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x[None], train=False, mutable=True),
        jnp.asarray(sample_image),
    )
    features = jax.eval_shape(_features, variables.get("intermediates", {}))
    return layer_names(variables["params"]), features.shape[0]


def per_example_norms(model: nn.Module, params, images, labels):
    """float32 [B]: the whole-model loss-gradient norm of each of images [B, ...] with labels
    int [B], for a BatchNorm-free model (lira/training/dpsgd.py's ghost clipping): the last
    column of make_whitebox_fn's norms on one query, the image itself."""
    state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=())
    taps = find_taps(model, _variables(state), images[0])
    squares, inputs, out_grads, _ = _gradients(model, 1, taps, state, images, labels)
    return _norms(taps, params, squares, inputs, out_grads)[:, -1]
