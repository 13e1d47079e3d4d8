//! Training kernels for the seed CNN's layers on the CPU: a 3x3 valid convolution with bias and
//! ReLU, optionally followed by a 2x2 max-pool, forward and backward, in NHWC.
//!
//! Why not burn's own `conv2d`: on `flex`, its backward pass goes through a transposed
//! convolution and a convolution with swapped axes, which spends most of an epoch copying and
//! used ~1.4 of the 2 cores (`cargo xtask bench-train`, README). Here every layer is im2col plus
//! three matrix products (forward, weight gradient, input gradient) on `gemm`, the crate `flex`
//! itself multiplies with. The work is split over fixed chunks of images so that both cores
//! stay busy and the sums are the same whatever the number of threads; each chunk's im2col
//! lives in a per-thread scratch buffer (rebuilt in the backward pass rather than kept), and
//! convolution outputs that a pool drops (the odd last row and column) are never computed.

use std::cell::RefCell;

use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;

/// Images per parallel task. Fixed (not derived from the thread count) so that results are
/// bit-identical on any machine.
const IMAGES_PER_TASK: usize = 4;

/// Pool code of an output whose window maximum was not positive: ReLU passes no gradient.
const NO_GRADIENT: u8 = 4;

/// A 3x3, stride 1, unpadded convolution over `[batch, height, width, cin]` to `cout` channels,
/// with bias and ReLU, then (if `pool`) a 2x2 stride-2 max-pool that drops an odd last row/column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3x3 {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub cin: usize,
    pub cout: usize,
    pub pool: bool,
}

impl Conv3x3 {
    /// Output rows and columns of the layer (after the pool, if any).
    fn output_hw(&self) -> (usize, usize) {
        let (h, w) = (self.height - 2, self.width - 2);
        if self.pool {
            (h / 2, w / 2)
        } else {
            (h, w)
        }
    }
    /// Convolution rows and columns that reach the output: with a pool, an odd last one is not.
    fn used_hw(&self) -> (usize, usize) {
        let (h, w) = self.output_hw();
        if self.pool {
            (2 * h, 2 * w)
        } else {
            (h, w)
        }
    }
    /// Rows of the im2col matrix per image: one per used convolution output pixel.
    fn rows_per_image(&self) -> usize {
        let (h, w) = self.used_hw();
        h * w
    }
    /// Columns of the im2col matrix: the 3x3xcin window.
    fn depth(&self) -> usize {
        9 * self.cin
    }
    fn input_per_image(&self) -> usize {
        self.height * self.width * self.cin
    }
    fn output_per_image(&self) -> usize {
        let (h, w) = self.output_hw();
        h * w * self.cout
    }
    /// `[batch, out_height, out_width, cout]`.
    pub fn output_shape(&self) -> [usize; 4] {
        let (h, w) = self.output_hw();
        [self.batch, h, w, self.cout]
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.input_per_image()
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.output_per_image()
    }
    pub fn weight_len(&self) -> usize {
        self.cout * self.depth()
    }
}

/// What the backward pass needs from the forward pass besides the input.
#[derive(Clone, Debug)]
pub struct Saved {
    shape: Conv3x3,
    /// Weights as `[depth, cout]`.
    weights: Vec<f32>,
    /// Per output element: with pooling, which of the 4 window positions was the maximum
    /// (`NO_GRADIENT` if it was not positive); without, 1 where ReLU let the value through.
    routes: Vec<u8>,
}

/// Gradients of one layer.
pub struct Gradients {
    /// `[batch, height, width, cin]`, if asked for.
    pub input: Option<Vec<f32>>,
    /// `[cout, cin, 3, 3]` (burn's layout).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Per-thread buffers reused from one chunk to the next: no allocation, no zeroing.
#[derive(Default)]
struct Scratch {
    columns: Vec<f32>,
    products: Vec<f32>,
    column_grads: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The first `len` elements of `buffer`, grown if needed; the contents are stale.
fn stale(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// burn's `[cout, cin, 3, 3]` to `[depth, cout]`, depth ordered (kh, kw, ci) like an im2col row.
fn weights_to_depth_major(oihw: &[f32], s: &Conv3x3) -> Vec<f32> {
    let mut kn = vec![0.0; s.weight_len()];
    for co in 0..s.cout {
        for ci in 0..s.cin {
            for tap in 0..9 {
                kn[(tap * s.cin + ci) * s.cout + co] = oihw[(co * s.cin + ci) * 9 + tap];
            }
        }
    }
    kn
}

fn depth_major_to_weights(kn: &[f32], s: &Conv3x3) -> Vec<f32> {
    let mut oihw = vec![0.0; s.weight_len()];
    for co in 0..s.cout {
        for ci in 0..s.cin {
            for tap in 0..9 {
                oihw[(co * s.cin + ci) * 9 + tap] = kn[(tap * s.cin + ci) * s.cout + co];
            }
        }
    }
    oihw
}

/// A row-major or transposed view of a matrix for [`matmul`]: element (i, j) is at
/// `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        View { data, row_stride: cols, col_stride: 1 }
    }
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        View { data, row_stride: 1, col_stride: cols }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst[m, n] = lhs[m, k] * rhs[k, n]` (`dst` row-major; its old contents are not read), on the
/// calling thread.
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: View, rhs: View) {
    assert!(dst.len() >= m * n && lhs.fits(m, k) && rhs.fits(k, n), "matmul operands out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the assertion above keeps every index gemm touches inside the three slices, and
    // `dst` (a unique borrow) does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The im2col rows of a chunk of images: for each used output pixel, its 3x3xcin window, one
/// kernel row (3 * cin contiguous values) at a time.
#[inline(always)]
fn im2col(images: &[f32], columns: &mut [f32], s: &Conv3x3) {
    let ((uh, uw), run) = (s.used_hw(), 3 * s.cin);
    for (image, columns) in images.chunks_exact(s.input_per_image()).zip(columns.chunks_exact_mut(s.rows_per_image() * s.depth())) {
        for (row, out) in columns.chunks_exact_mut(s.depth()).enumerate() {
            let (oy, ox) = (row / uw, row % uw);
            debug_assert!(oy < uh);
            for kh in 0..3 {
                let start = ((oy + kh) * s.width + ox) * s.cin;
                out[kh * run..(kh + 1) * run].copy_from_slice(&image[start..start + run]);
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each window row onto a chunk's (zeroed) input gradient.
#[inline(always)]
fn col2im(columns: &[f32], images: &mut [f32], s: &Conv3x3) {
    let (uw, run) = (s.used_hw().1, 3 * s.cin);
    for (image, columns) in images.chunks_exact_mut(s.input_per_image()).zip(columns.chunks_exact(s.rows_per_image() * s.depth())) {
        for (row, window) in columns.chunks_exact(s.depth()).enumerate() {
            let (oy, ox) = (row / uw, row % uw);
            for kh in 0..3 {
                let start = ((oy + kh) * s.width + ox) * s.cin;
                for (dst, src) in image[start..start + run].iter_mut().zip(&window[kh * run..(kh + 1) * run]) {
                    *dst += src;
                }
            }
        }
    }
}

/// Whether a layer's products are computed directly rather than by im2col and `gemm`: with one
/// input channel an im2col row holds only 9 values and the matrix product mostly moves memory.
fn direct(s: &Conv3x3) -> bool {
    s.cin == 1 && s.cout.is_multiple_of(LANES)
}

/// The 9 input values of im2col row `row` of a one-channel image.
#[inline(always)]
fn window9(image: &[f32], row: usize, s: &Conv3x3) -> [f32; 9] {
    let (oy, ox) = (row / s.used_hw().1, row % s.used_hw().1);
    std::array::from_fn(|t| image[(oy + t / 3) * s.width + ox + t % 3])
}

/// Lanes per block of channels: one AVX register of f32, kept in registers across the 9 taps.
const LANES: usize = 8;

/// `acc += x * w` for one block of lanes (multiply, then add: not fused); fixed sizes so that it
/// stays in registers.
#[inline(always)]
fn multiply_add(acc: &mut [f32; LANES], x: f32, w: &[f32; LANES]) {
    for (a, w) in acc.iter_mut().zip(w) {
        *a += x * w;
    }
}

fn lanes(v: &[f32]) -> &[f32; LANES] {
    v[..LANES].try_into().expect("a full block")
}

/// `z = im2col(images) * weights` computed directly (see [`direct`]).
#[inline(always)]
fn products_direct(images: &[f32], weights: &[f32], z: &mut [f32], s: &Conv3x3) {
    let c = s.cout;
    let blocks: Vec<[[f32; LANES]; 9]> = (0..c).step_by(LANES).map(|start| std::array::from_fn(|t| *lanes(&weights[t * c + start..]))).collect();
    for (image, z) in images.chunks_exact(s.input_per_image()).zip(z.chunks_exact_mut(s.rows_per_image() * c)) {
        for (row, zr) in z.chunks_exact_mut(c).enumerate() {
            let v = window9(image, row, s);
            for (w, out) in blocks.iter().zip(zr.chunks_exact_mut(LANES)) {
                let mut acc = [0.0f32; LANES];
                for (&x, w) in v.iter().zip(w) {
                    multiply_add(&mut acc, x, w);
                }
                out.copy_from_slice(&acc);
            }
        }
    }
}

/// `dw = im2col(images)^T * dz` computed directly (see [`direct`]).
#[inline(always)]
fn weight_grad_direct(images: &[f32], dz: &[f32], dw: &mut [f32], s: &Conv3x3) {
    let c = s.cout;
    for start in (0..c).step_by(LANES) {
        let mut acc = [[0.0f32; LANES]; 9];
        for (image, dz) in images.chunks_exact(s.input_per_image()).zip(dz.chunks_exact(s.rows_per_image() * c)) {
            for (row, dzr) in dz.chunks_exact(c).enumerate() {
                let v = window9(image, row, s);
                let g = lanes(&dzr[start..]);
                for (acc, &x) in acc.iter_mut().zip(&v) {
                    multiply_add(acc, x, g);
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            dw[t * c + start..][..LANES].copy_from_slice(acc);
        }
    }
}

/// For pooled output pixel `index` of an image, the im2col row of window position `q` (0..4).
#[inline(always)]
fn pooled_row(index: usize, q: usize, s: &Conv3x3) -> usize {
    let (pw, uw) = (s.output_hw().1, s.used_hw().1);
    let (py, px) = (index / pw, index % pw);
    (2 * py + q / 2) * uw + 2 * px + q % 2
}

/// Bias then ReLU (and pooling) of a chunk's products `z` into `out`, recording routes. The
/// pool takes the maximum before adding the bias (the same for all four positions).
#[inline(always)]
fn activate(z: &[f32], bias: &[f32], out: &mut [f32], routes: &mut [u8], s: &Conv3x3) {
    let c = s.cout;
    if !s.pool {
        for ((out, routes), z) in out.chunks_exact_mut(c).zip(routes.chunks_exact_mut(c)).zip(z.chunks_exact(c)) {
            for (((o, r), &v), &b) in out.iter_mut().zip(routes.iter_mut()).zip(z).zip(bias) {
                let v = v + b;
                *o = v.max(0.0);
                *r = (v > 0.0) as u8;
            }
        }
        return;
    }
    let (pixels, per_image) = (s.output_per_image() / c, s.rows_per_image() * c);
    for (i, (out, routes)) in out.chunks_exact_mut(c).zip(routes.chunks_exact_mut(c)).enumerate() {
        let z = &z[i / pixels * per_image..][..per_image];
        let [z0, z1, z2, z3]: [&[f32]; 4] = std::array::from_fn(|q| &z[pooled_row(i % pixels, q, s) * c..][..c]);
        for ((((((o, r), &b), &v0), &v1), &v2), &v3) in out.iter_mut().zip(routes.iter_mut()).zip(bias).zip(z0).zip(z1).zip(z2).zip(z3) {
            let (mut best, mut code) = (v0, 0u8);
            if v1 > best {
                (best, code) = (v1, 1);
            }
            if v2 > best {
                (best, code) = (v2, 2);
            }
            if v3 > best {
                (best, code) = (v3, 3);
            }
            let v = best + b;
            let positive = v > 0.0;
            *o = if positive { v } else { 0.0 };
            *r = if positive { code } else { NO_GRADIENT };
        }
    }
}

/// The gradient at a chunk's convolution products from its output gradient. With pooling every
/// used product row belongs to exactly one window, so every element of `dz` is written.
#[inline(always)]
fn product_grad(grad: &[f32], routes: &[u8], dz: &mut [f32], s: &Conv3x3) {
    let c = s.cout;
    if !s.pool {
        for ((d, &g), &r) in dz.iter_mut().zip(grad).zip(routes) {
            *d = if r != 0 { g } else { 0.0 };
        }
        return;
    }
    let ((pw, uw), per_image) = ((s.output_hw().1, s.used_hw().1), s.output_per_image());
    for (image, dz) in dz.chunks_exact_mut(s.rows_per_image() * c).enumerate() {
        for (row, dz) in dz.chunks_exact_mut(c).enumerate() {
            let (y, x) = (row / uw, row % uw);
            let q = ((y % 2) * 2 + x % 2) as u8;
            let at = image * per_image + ((y / 2) * pw + x / 2) * c;
            for ((d, &g), &r) in dz.iter_mut().zip(&grad[at..at + c]).zip(&routes[at..at + c]) {
                *d = if r == q { g } else { 0.0 };
            }
        }
    }
}

/// One chunk of images of the forward pass. Compiled for AVX2 too (chosen at run time), so that
/// the loops inlined here vectorize 8 wide; `gemm` dispatches on its own.
#[multiversion(targets("x86_64+avx2"))]
fn forward_chunk(input: &[f32], weights: &[f32], bias: &[f32], output: &mut [f32], routes: &mut [u8], s: &Conv3x3, scratch: &mut Scratch) {
    let (depth, rows) = (s.depth(), input.len() / s.input_per_image() * s.rows_per_image());
    let z = stale(&mut scratch.products, rows * s.cout);
    if direct(s) {
        products_direct(input, weights, z, s);
    } else {
        let columns = stale(&mut scratch.columns, rows * depth);
        im2col(input, columns, s);
        matmul(rows, s.cout, depth, z, View::rows(columns, depth), View::rows(weights, s.cout));
    }
    activate(z, bias, output, routes, s);
}

/// One chunk of images of the backward pass: its weight and bias gradients, and its input
/// gradient into `input_grad` if given. Compiled like [`forward_chunk`].
#[multiversion(targets("x86_64+avx2"))]
fn backward_chunk(
    input: &[f32],
    grad: &[f32],
    routes: &[u8],
    weights: &[f32],
    input_grad: Option<&mut [f32]>,
    s: &Conv3x3,
    scratch: &mut Scratch,
) -> (Vec<f32>, Vec<f32>) {
    let (depth, rows) = (s.depth(), input.len() / s.input_per_image() * s.rows_per_image());
    let dz = stale(&mut scratch.products, rows * s.cout);
    product_grad(grad, routes, dz, s);
    let mut dw = vec![0.0; depth * s.cout];
    if direct(s) {
        weight_grad_direct(input, dz, &mut dw, s);
    } else {
        let columns = stale(&mut scratch.columns, rows * depth);
        im2col(input, columns, s);
        matmul(depth, s.cout, rows, &mut dw, View::transposed(columns, depth), View::rows(dz, s.cout));
    }
    let mut db = vec![0.0; s.cout];
    for row in dz.chunks_exact(s.cout) {
        db.iter_mut().zip(row).for_each(|(b, d)| *b += d);
    }
    if let Some(input_grad) = input_grad {
        let dcols = stale(&mut scratch.column_grads, rows * depth);
        matmul(rows, depth, s.cout, dcols, View::rows(dz, s.cout), View::transposed(weights, s.cout));
        col2im(dcols, input_grad, s);
    }
    (dw, db)
}

/// Forward pass: `input` `[batch, height, width, cin]`, `weight` `[cout, cin, 3, 3]`, `bias`
/// `[cout]`. Returns the output (`s.output_shape()`) and what the backward pass needs.
pub fn forward(input: &[f32], weight: &[f32], bias: &[f32], s: Conv3x3) -> (Vec<f32>, Saved) {
    assert!(s.height >= 3 && s.width >= 3, "a 3x3 convolution needs an input of at least 3x3");
    assert_eq!(input.len(), s.input_len(), "input length");
    assert_eq!(weight.len(), s.weight_len(), "weight length");
    assert_eq!(bias.len(), s.cout, "bias length");
    let weights = weights_to_depth_major(weight, &s);
    let mut output = vec![0.0; s.output_len()];
    let mut routes = vec![0u8; output.len()];
    input
        .par_chunks(IMAGES_PER_TASK * s.input_per_image())
        .zip(output.par_chunks_mut(IMAGES_PER_TASK * s.output_per_image()))
        .zip(routes.par_chunks_mut(IMAGES_PER_TASK * s.output_per_image()))
        .for_each(|((input, output), routes)| {
            SCRATCH.with_borrow_mut(|scratch| forward_chunk(input, &weights, bias, output, routes, &s, scratch))
        });
    (output, Saved { shape: s, weights, routes })
}

/// Backward pass from the output gradient, given the forward pass's input; the input gradient
/// only if `need_input`.
pub fn backward(input: &[f32], grad: &[f32], saved: &Saved, need_input: bool) -> Gradients {
    let s = saved.shape;
    assert_eq!(input.len(), s.input_len(), "input length");
    assert_eq!(grad.len(), s.output_len(), "output gradient length");
    let depth = s.depth();
    let mut input_grad = need_input.then(|| vec![0.0; s.input_len()]);
    let mut input_grad_chunks: Vec<Option<&mut [f32]>> = match input_grad.as_mut() {
        Some(v) => v.chunks_mut(IMAGES_PER_TASK * s.input_per_image()).map(Some).collect(),
        None => (0..s.batch.div_ceil(IMAGES_PER_TASK)).map(|_| None).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = input
        .par_chunks(IMAGES_PER_TASK * s.input_per_image())
        .zip(grad.par_chunks(IMAGES_PER_TASK * s.output_per_image()))
        .zip(saved.routes.par_chunks(IMAGES_PER_TASK * s.output_per_image()))
        .zip(input_grad_chunks.par_iter_mut())
        .map(|(((input, grad), routes), input_grad)| {
            SCRATCH.with_borrow_mut(|scratch| backward_chunk(input, grad, routes, &saved.weights, input_grad.as_deref_mut(), &s, scratch))
        })
        .collect();
    let mut weight = vec![0.0; depth * s.cout];
    let mut bias = vec![0.0; s.cout];
    for (dw, db) in &partials {
        weight.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
        bias.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    Gradients { input: input_grad, weight: depth_major_to_weights(&weight, &s), bias }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NHWC convolution + bias + ReLU (+ pool), the definition the kernels must meet.
    fn naive(input: &[f32], weight: &[f32], bias: &[f32], s: Conv3x3) -> Vec<f64> {
        let (oh, ow) = (s.height - 2, s.width - 2);
        let mut conv = vec![0.0f64; s.batch * oh * ow * s.cout];
        for b in 0..s.batch {
            for y in 0..oh {
                for x in 0..ow {
                    for co in 0..s.cout {
                        let mut acc = bias[co] as f64;
                        for ci in 0..s.cin {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let v = input[((b * s.height + y + kh) * s.width + x + kw) * s.cin + ci];
                                    acc += v as f64 * weight[((co * s.cin + ci) * 3 + kh) * 3 + kw] as f64;
                                }
                            }
                        }
                        conv[((b * oh + y) * ow + x) * s.cout + co] = acc.max(0.0);
                    }
                }
            }
        }
        if !s.pool {
            return conv;
        }
        let (ph, pw) = s.output_hw();
        let mut out = Vec::new();
        for b in 0..s.batch {
            for y in 0..ph {
                for x in 0..pw {
                    for co in 0..s.cout {
                        let at = |dy: usize, dx: usize| conv[((b * oh + 2 * y + dy) * ow + 2 * x + dx) * s.cout + co];
                        out.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
                    }
                }
            }
        }
        out
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn shapes() -> Vec<Conv3x3> {
        vec![
            Conv3x3 { batch: 5, height: 8, width: 7, cin: 1, cout: 3, pool: true },
            Conv3x3 { batch: 3, height: 9, width: 8, cin: 1, cout: 16, pool: true },
            Conv3x3 { batch: 3, height: 7, width: 7, cin: 4, cout: 5, pool: true },
            Conv3x3 { batch: 6, height: 5, width: 6, cin: 3, cout: 2, pool: false },
        ]
    }

    /// Input, weights and bias for shape `s`, from `seed`.
    fn operands(s: &Conv3x3, seed: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (pseudo_random(s.input_len(), seed), pseudo_random(s.weight_len(), seed + 10), pseudo_random(s.cout, seed + 20))
    }

    #[test]
    fn forward_matches_the_definition() {
        for (i, s) in shapes().into_iter().enumerate() {
            let (x, w, b) = operands(&s, 1 + i as u32);
            let (out, _) = forward(&x, &w, &b, s);
            let want = naive(&x, &w, &b, s);
            assert_eq!(out.len(), want.len());
            for (o, w) in out.iter().zip(&want) {
                assert!((*o as f64 - w).abs() < 1e-4, "{s:?}: {o} vs {w}");
            }
        }
    }

    /// Every gradient against a central finite difference of `sum(output * probe)` in f64.
    #[test]
    fn gradients_match_finite_differences() {
        for (i, s) in shapes().into_iter().enumerate() {
            let (x, w, b) = operands(&s, 31 + i as u32);
            let probe = pseudo_random(s.output_len(), 61 + i as u32);
            let objective = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                naive(x, w, b, s).iter().zip(&probe).map(|(&o, &p)| o * p as f64).sum()
            };
            let (_, saved) = forward(&x, &w, &b, s);
            let g = backward(&x, &probe, &saved, true);
            // Central differences at two step sizes; where they disagree a ReLU or max kink lies
            // within the step and the point is skipped (most points must be usable).
            let check = |name: &str, params: &[f32], grads: &[f32], eval: &dyn Fn(&[f32]) -> f64| {
                let numeric = |j: usize, h: f32| {
                    let (mut plus, mut minus) = (params.to_vec(), params.to_vec());
                    plus[j] += h;
                    minus[j] -= h;
                    (eval(&plus) - eval(&minus)) / (plus[j] as f64 - minus[j] as f64)
                };
                let (mut checked, mut skipped) = (0, 0);
                for j in (0..params.len()).step_by(3) {
                    let (coarse, fine) = (numeric(j, 1e-4), numeric(j, 2.5e-5));
                    if (coarse - fine).abs() > 1e-3 {
                        skipped += 1;
                        continue;
                    }
                    checked += 1;
                    assert!((fine - grads[j] as f64).abs() < 1e-3, "{s:?} d{name}[{j}]: numeric {fine} vs {}", grads[j]);
                }
                assert!(skipped * 10 <= checked, "{s:?} d{name}: {skipped} kinks in {checked} points");
            };
            check("x", &x, g.input.as_ref().unwrap(), &|p| objective(p, &w, &b));
            check("w", &w, &g.weight, &|p| objective(&x, p, &b));
            check("b", &b, &g.bias, &|p| objective(&x, &w, p));
            assert!(backward(&x, &probe, &saved, false).input.is_none());
        }
    }
}
#[cfg(test)]
mod timing {
    use super::*;

    /// A benchmark, not a test: milliseconds per batch of 64 for each of the seed CNN's layers.
    /// `cargo test --release -p lepton --lib layer_times -- --ignored --nocapture` (`LAYER=2`
    /// for one layer, e.g. under `perf record`).
    #[test]
    #[ignore]
    fn layer_times() {
        let layers = [
            Conv3x3 { batch: 64, height: 28, width: 28, cin: 1, cout: 32, pool: true },
            Conv3x3 { batch: 64, height: 13, width: 13, cin: 32, cout: 64, pool: true },
            Conv3x3 { batch: 64, height: 5, width: 5, cin: 64, cout: 64, pool: false },
        ];
        let only: Option<usize> = std::env::var("LAYER").ok().and_then(|v| v.parse().ok());
        for (i, s) in layers.into_iter().enumerate().filter(|(i, _)| only.is_none_or(|o| o == i + 1)) {
            let x: Vec<f32> = (0..s.input_len()).map(|j| ((j * 7919) % 1000) as f32 / 1000.0 - 0.3).collect();
            let w: Vec<f32> = (0..s.weight_len()).map(|j| ((j * 104729) % 1000) as f32 / 5000.0 - 0.1).collect();
            let b = vec![0.01; s.cout];
            let n = 50;
            let t = std::time::Instant::now();
            let mut saved = None;
            for _ in 0..n { saved = Some(forward(&x, &w, &b, s)); }
            let f = t.elapsed().as_secs_f64() / n as f64;
            let (out, saved) = saved.unwrap();
            let g = vec![0.5; out.len()];
            let t = std::time::Instant::now();
            for _ in 0..n { std::hint::black_box(backward(&x, &g, &saved, i > 0)); }
            let bw = t.elapsed().as_secs_f64() / n as f64;
            eprintln!("layer {} forward {:.2} ms backward {:.2} ms  -> per epoch {:.2} s", i + 1, f * 1e3, bw * 1e3, (f + bw) * 938.0);
        }
    }
}
