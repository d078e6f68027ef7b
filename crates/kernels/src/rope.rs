//! Rotary position embedding, partial and rotate-half ("NeoX") style (spec 2.4).
//!
//! Only the first `rotary_dims` entries of a head are rotated (64 of 256 in
//! the released models); the rest pass through. Entry `i` pairs with entry
//! `i + rotary_dims/2`, not with its neighbour.
//!
//! Precision choice. The inverse frequencies `theta^(-2i/rd)` are computed in
//! f64 and stored rounded to f32, because the models were trained (by HF code)
//! with f32 inverse frequencies: using the f32 value is using the frequency
//! the weights expect. (HF derives its f32 value with an f32 `pow` and an f32
//! division, so an individual frequency may differ from ours by one f32 ulp.)
//! The angle `pos * inv_freq` is then formed in f64 and `cos`/`sin` are taken
//! in f64 before rounding to f32. HF instead rounds the product to f32 before
//! `cos`/`sin`; at position 262144 an f32 angle has an ulp of 2^-5 rad, so HF's
//! rotation there is off by up to 2^-6 rad from the exact rotation for its own
//! frequencies, while ours is exact to f32 rounding of `cos`/`sin` at every
//! position below 2^53. The two differ by at most half an f32 ulp of the
//! angle, i.e. about `pos * 2^-24` rad for the fastest slot (inv_freq = 1).

/// Precomputed inverse frequencies for one rotary configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    /// Number of leading head entries that rotate (even).
    rotary_dims: usize,
    /// `[rotary_dims / 2]`: `theta^(-2i/rotary_dims)`, computed in f64, stored f32.
    inv_freq: Vec<f32>,
}

impl RopeTable {
    /// Builds the table for `rotary_dims` rotated entries and base `theta`
    /// (`rope_theta`, e.g. 1e7).
    ///
    /// # Panics
    /// If `rotary_dims` is odd or zero, or `theta` is not finite and > 0
    /// (caller contract: these come from a validated config).
    pub fn new(rotary_dims: usize, theta: f64) -> Self {
        assert!(
            rotary_dims > 0 && rotary_dims.is_multiple_of(2),
            "RopeTable: rotary_dims must be even and > 0, got {rotary_dims}"
        );
        assert!(theta.is_finite() && theta > 0.0, "RopeTable: theta must be > 0, got {theta}");
        let inv_freq =
            (0..rotary_dims / 2).map(|i| theta.powf(-((2 * i) as f64) / rotary_dims as f64) as f32).collect();
        Self { rotary_dims, inv_freq }
    }

    /// Number of leading entries of a head that rotate.
    pub fn rotary_dims(&self) -> usize {
        self.rotary_dims
    }

    /// `[rotary_dims / 2]`: the stored (f32) inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos`, `sin` of the angle of frequency slot `i` at `pos` (angle in f64).
    #[inline]
    fn cos_sin(&self, i: usize, pos: usize) -> (f32, f32) {
        let angle = pos as f64 * self.inv_freq[i] as f64;
        let (s, c) = angle.sin_cos();
        (c as f32, s as f32)
    }

    /// Fills the per-slot `cos` and `sin` at `pos`, so that a caller rotating
    /// many heads of one token pays for the trigonometry once.
    /// `cos`, `sin`: `[rotary_dims / 2]`.
    ///
    /// # Panics
    /// If `cos` or `sin` does not have exactly `rotary_dims / 2` entries.
    pub fn fill_cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.rotary_dims / 2;
        assert!(cos.len() == half && sin.len() == half, "fill_cos_sin: lengths");
        for i in 0..half {
            let (c, s) = self.cos_sin(i, pos);
            cos[i] = c;
            sin[i] = s;
        }
    }

    /// Rotates one head in place at absolute position `pos` (0-based).
    /// `head`: `[head_dim]`, `head_dim >= rotary_dims`; entries from
    /// `rotary_dims` on are left untouched. Gives bit-identical results to
    /// [`fill_cos_sin`](Self::fill_cos_sin) followed by [`rotate_neox`].
    ///
    /// # Panics
    /// If `head` is shorter than `rotary_dims`.
    pub fn apply_neox(&self, head: &mut [f32], pos: usize) {
        let half = self.rotary_dims / 2;
        assert!(head.len() >= self.rotary_dims, "apply_neox: head shorter than rotary_dims");
        let (lo, hi) = head[..self.rotary_dims].split_at_mut(half);
        for i in 0..half {
            let (c, s) = self.cos_sin(i, pos);
            rotate_pair(&mut lo[i], &mut hi[i], c, s);
        }
    }
}

/// Rotates one head in place with precomputed `cos`/`sin` (see
/// [`RopeTable::fill_cos_sin`]). `head`: `[head_dim]`; `cos`, `sin`:
/// `[rotary_dims / 2]`; the first `2 * cos.len()` entries rotate, the rest pass through.
///
/// # Panics
/// If `cos` and `sin` differ in length or `head` is shorter than `2 * cos.len()`.
pub fn rotate_neox(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert!(sin.len() == half && head.len() >= 2 * half, "rotate_neox: lengths");
    let (lo, hi) = head[..2 * half].split_at_mut(half);
    for i in 0..half {
        rotate_pair(&mut lo[i], &mut hi[i], cos[i], sin[i]);
    }
}

/// `(x0, x1) <- (x0 cos - x1 sin, x1 cos + x0 sin)`, the order HF's
/// `q * cos + rotate_half(q) * sin` evaluates in.
#[inline]
fn rotate_pair(x0: &mut f32, x1: &mut f32, c: f32, s: f32) {
    let (a, b) = (*x0, *x1);
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}
