//! `.npy` files (NumPy's format) with the `npyz` crate: model inputs and outputs of
//! `lepton run`, calibration inputs. A wrong dtype or shape is a clear error naming the file.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// An array read from a `.npy` file: its shape and its values in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub values: Vec<T>,
}

fn open(path: &Path) -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    npyz::NpyFile::new(std::io::BufReader::new(file)).with_context(|| format!("{} is not a .npy file", path.display()))
}

fn read<T: npyz::Deserialize>(path: &Path, want: &str, numpy: &str) -> Result<Array<T>> {
    let npy = open(path)?;
    let descr = npy.dtype().descr();
    if descr != want {
        bail!("{} holds dtype {descr}; expected {numpy} ({want}): convert it with `x.astype(np.{numpy})`", path.display());
    }
    if npy.order() != npyz::Order::C {
        bail!("{} is in Fortran order; save it in C order (`np.ascontiguousarray`)", path.display());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let values = npy.into_vec::<T>().with_context(|| format!("reading the values of {}", path.display()))?;
    Ok(Array { shape, values })
}

/// An int8 array.
pub fn read_i8(path: &Path) -> Result<Array<i8>> {
    read(path, "'|i1'", "int8")
}

/// A float32 array (little-endian).
pub fn read_f32(path: &Path) -> Result<Array<f32>> {
    read(path, "'<f4'", "float32")
}

/// Write an int8 array (all or nothing: a temporary file renamed into place).
pub fn write_i8(path: &Path, shape: &[usize], values: &[i8]) -> Result<()> {
    let mut bytes = Vec::new();
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    {
        use npyz::WriterBuilder;
        let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut bytes).begin_nd()?;
        writer.extend(values.iter().copied())?;
        writer.finish()?;
    }
    crate::files::write_atomically(path, &bytes)
}

/// Split `array` into inputs of `input_shape` (NHWC): its shape must be `N x <input shape>`,
/// where a leading batch of 1 in the model's shape is dropped and a `1 x N` vector may also be
/// given as `N`. Returns the number of inputs.
pub fn check_batch(path: &Path, shape: &[usize], model_shape: [usize; 3]) -> Result<usize> {
    let [h, w, c] = model_shape;
    let per_input: usize = h * w * c;
    let wanted: Vec<Vec<usize>> = if h == 1 && w == 1 { vec![vec![c], vec![1, c], vec![1, 1, c]] } else if w == 1 { vec![vec![h, 1, c], vec![h, c]] } else { vec![vec![h, w, c]] };
    let (n, rest) = shape.split_first().map_or((0, &[][..]), |(n, rest)| (*n, rest));
    if n == 0 || !wanted.iter().any(|s| s.as_slice() == rest) {
        let expected = wanted.iter().map(|s| format!("N x {}", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x "))).collect::<Vec<_>>().join(" or ");
        bail!("{} has shape {shape:?}; the model takes {h}x{w}x{c} inputs, so expected {expected} (N >= 1)", path.display());
    }
    debug_assert_eq!(rest.iter().product::<usize>(), per_input);
    Ok(n)
}
