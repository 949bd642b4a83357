//! Tensors on disk: NumPy `.npy` files (read and written with the `npyz` crate).
//!
//! Conventions:
//! - Read: `f32`, `f16`, `i32` and `bool` arrays load as themselves; a `u16` array is raw `bf16` bits and
//!   loads as a `bf16` tensor (NumPy has no bf16); `f64` converts to `f32` (rounding; out-of-range values
//!   become infinities); `i64`, `i16`, `i8` and `u8` convert to `i32` (an `i64` value that does not fit
//!   `i32` is an error). Only C order (row-major) is read: a Fortran-order file is an error.
//! - [`to_param_dtype`]: a `bf16` or `f16` parameter also accepts an `f32` array, rounded to nearest-even.
//! - Write: a `bf16` tensor is written as `f32` (exact), or as raw `u16` bits when asked; `f16` as `f16`;
//!   the rest as themselves. Rank-0 tensors (scalars) are written with shape `()`.
//!
//! Reading never panics: a truncated, oversized or garbage file is an `Err` with a message.

use half::{bf16, f16};
use kc_ir::launch::MAX_ELEMENTS;
use kc_ir::{DType, Tensor, TensorData};
use npyz::{NpyFile, NpyHeader, Order, TypeChar, WriterBuilder};

/// The deepest bracket nesting a header may have (NumPy writes at most a few levels).
const MAX_HEADER_NESTING: usize = 32;

/// Reads a `.npy` file's bytes into a tensor (see the module doc for the dtypes accepted).
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, String> {
    precheck_header(bytes)?;
    let mut rest = bytes;
    let header = NpyHeader::from_reader(&mut rest).map_err(|e| format!("not a valid .npy file: {e}"))?;
    if header.order() == Order::Fortran {
        return Err("the array is stored in Fortran order; kc reads C order (row-major) only: \
                    save it with `np.save(path, np.ascontiguousarray(a))`"
            .to_string());
    }
    let ts = match header.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => return Err(format!("structured dtype {} is not supported: kc reads plain arrays", other.descr())),
    };
    let shape: Vec<usize> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
        .collect::<Result<_, _>>()?;
    let n = check_numel(header.shape())?;
    let item = ts.num_bytes().ok_or_else(|| format!("unsupported dtype `{ts}`"))?;
    let expected = n.checked_mul(item as u64).ok_or_else(|| "the array is too large".to_string())?;
    let have = rest.len() as u64;
    if have < expected {
        return Err(format!(
            "the file is truncated: its header describes {n} elements of `{ts}` ({expected} bytes) \
             but only {have} bytes of data follow"
        ));
    }
    if have > expected {
        return Err(format!(
            "the file has {} bytes after its data: its header describes {n} elements of `{ts}` ({expected} bytes)",
            have - expected
        ));
    }
    let file = NpyFile::with_header(header, rest);
    let bad = |e: std::io::Error| format!("cannot read the data: {e}");
    let data = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => TensorData::F32(file.into_vec::<f32>().map_err(bad)?),
        (TypeChar::Float, 2) => TensorData::F16(file.into_vec::<f16>().map_err(bad)?),
        (TypeChar::Float, 8) => {
            TensorData::F32(file.into_vec::<f64>().map_err(bad)?.into_iter().map(|x| x as f32).collect())
        }
        (TypeChar::Int, 4) => TensorData::I32(file.into_vec::<i32>().map_err(bad)?),
        (TypeChar::Int, 8) => {
            let v = file.into_vec::<i64>().map_err(bad)?;
            let mut out = Vec::with_capacity(v.len());
            for (i, x) in v.into_iter().enumerate() {
                let y = i32::try_from(x)
                    .map_err(|_| format!("element {i} of the int64 array is {x}, which does not fit in i32"))?;
                out.push(y);
            }
            TensorData::I32(out)
        }
        (TypeChar::Int, 2) => {
            TensorData::I32(file.into_vec::<i16>().map_err(bad)?.into_iter().map(i32::from).collect())
        }
        (TypeChar::Int, 1) => TensorData::I32(file.into_vec::<i8>().map_err(bad)?.into_iter().map(i32::from).collect()),
        (TypeChar::Uint, 1) => {
            TensorData::I32(file.into_vec::<u8>().map_err(bad)?.into_iter().map(i32::from).collect())
        }
        (TypeChar::Uint, 2) => {
            TensorData::BF16(file.into_vec::<u16>().map_err(bad)?.into_iter().map(bf16::from_bits).collect())
        }
        (TypeChar::Bool, 1) => TensorData::Bool(file.into_vec::<bool>().map_err(bad)?),
        _ => {
            return Err(format!(
                "unsupported dtype `{ts}`: kc reads float32, float16, float64, int32, int64, int16, int8, uint8, \
                 bool, and uint16 as raw bf16 bits"
            ))
        }
    };
    Tensor::new(shape, data).ok_or_else(|| "the data does not match the shape in the header".to_string())
}

/// The number of elements of a shape read from a file, refusing sizes a launch could never take.
fn check_numel(shape: &[u64]) -> Result<u64, String> {
    let mut total: u64 = 1;
    for &d in shape {
        if d > MAX_ELEMENTS {
            return Err(format!("dimension {d} is larger than the limit of 2^40 elements"));
        }
        total = total.saturating_mul(d);
    }
    if total > MAX_ELEMENTS {
        return Err("the array has more than 2^40 elements".to_string());
    }
    Ok(total)
}

/// Checks what `npyz` would otherwise trust: that the header is complete, not absurdly nested, and that its
/// shape's products cannot overflow (a hostile shape must be an error, never a panic or a huge allocation).
fn precheck_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (it does not start with the NumPy magic bytes)".to_string());
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("the file is truncated in its header".to_string());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or("the file is truncated in its header")?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "the header is not text".to_string())?;

    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                if depth > MAX_HEADER_NESTING {
                    return Err("the header is nested too deeply".to_string());
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }

    let shape = header_shape(text).ok_or("the header has no readable `shape` entry")?;
    check_numel(&shape)?;
    Ok(())
}

/// The integers of the header's `'shape': (a, b, ...)` entry.
fn header_shape(text: &str) -> Option<Vec<u64>> {
    let key = text.find("'shape'").or_else(|| text.find("\"shape\""))?;
    let after = text[key + 7..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('(')?;
    let close = after.find(')')?;
    after[..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

/// Converts a tensor read from a file to the dtype of the parameter it is for: the same dtype as is; an `f32`
/// array for a `bf16` or `f16` parameter, rounded to nearest-even; anything else is an error naming both.
pub fn to_param_dtype(t: Tensor, want: DType) -> Result<Tensor, String> {
    let have = t.dtype();
    if have == want {
        return Ok(t);
    }
    match (have, want) {
        (DType::F32, DType::BF16 | DType::F16) => Ok(t.cast(want)),
        _ => {
            let hint = match (have, want) {
                (DType::BF16, _) => " (a uint16 array is read as raw bf16 bits)",
                (_, DType::BF16) => " (give bf16 as float32, or as uint16 raw bits)",
                (_, DType::F16) => " (give f16 as float16 or float32)",
                (_, DType::I32) => " (give i32 as int32 or int64)",
                (_, DType::Bool) => " (give bool as a bool array)",
                (_, DType::F32) => " (give f32 as float32 or float64)",
            };
            Err(format!("the parameter is {want} but the array holds {have}{hint}"))
        }
    }
}

/// Writes a tensor as a `.npy` file: a `bf16` tensor as `f32`, or as raw `u16` bits if `raw_bf16`.
pub fn write_npy(t: &Tensor, raw_bf16: bool) -> Vec<u8> {
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    match &t.data {
        TensorData::F32(v) => write_vec(&shape, v.iter().copied()),
        TensorData::BF16(v) if raw_bf16 => write_vec(&shape, v.iter().map(|x| x.to_bits())),
        TensorData::BF16(v) => write_vec(&shape, v.iter().map(|x| x.to_f32())),
        TensorData::F16(v) => write_vec(&shape, v.iter().copied()),
        TensorData::I32(v) => write_vec(&shape, v.iter().copied()),
        TensorData::Bool(v) => write_vec(&shape, v.iter().copied()),
    }
}

fn write_vec<T: npyz::AutoSerialize>(shape: &[u64], items: impl Iterator<Item = T>) -> Vec<u8> {
    let mut buf = Vec::new();
    // Writing to memory cannot fail, and the dtype is the element type's own, so these cannot fail either.
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .begin_nd()
        .expect("writing an .npy header to memory cannot fail");
    w.extend(items).expect("writing .npy data to memory cannot fail");
    w.finish().expect("finishing an .npy file in memory cannot fail");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(t: &Tensor) {
        let bytes = write_npy(t, false);
        let back = read_npy(&bytes).unwrap();
        assert_eq!(&back, t);
    }

    #[test]
    fn round_trip_every_dtype() {
        round_trip(&Tensor::from_f32(vec![2, 3], vec![1.0, -2.5, 0.0, f32::INFINITY, 1e-7, 3.25]).unwrap());
        round_trip(&Tensor::new(vec![3], TensorData::F16(vec![f16::from_f32(0.5), f16::ONE, f16::MAX])).unwrap());
        round_trip(&Tensor::from_i32(vec![2, 2], vec![1, -7, i32::MAX, i32::MIN]).unwrap());
        round_trip(&Tensor::new(vec![4], TensorData::Bool(vec![true, false, false, true])).unwrap());
        round_trip(&Tensor::from_f32(vec![0, 5], vec![]).unwrap());
    }

    #[test]
    fn rank_zero_round_trips() {
        round_trip(&Tensor::scalar_f32(2.5));
        round_trip(&Tensor::scalar_i32(-3));
        let b = Tensor::new(vec![], TensorData::BF16(vec![bf16::from_f32(1.5)])).unwrap();
        assert_eq!(read_npy(&write_npy(&b, true)).unwrap(), b);
    }

    #[test]
    fn bf16_as_f32_and_as_raw_bits() {
        let vals = [1.0f32, -0.375, 65280.0, 0.0078125];
        let t = Tensor::from_f32_as(DType::BF16, vec![2, 2], &vals).unwrap();
        // Default: written as f32, exactly; read back as f32, and converted back to bf16 without loss.
        let as_f32 = read_npy(&write_npy(&t, false)).unwrap();
        assert_eq!(as_f32.dtype(), DType::F32);
        assert_eq!(as_f32.to_f64_vec(), t.to_f64_vec());
        assert_eq!(to_param_dtype(as_f32, DType::BF16).unwrap(), t);
        // Raw: u16 bits, read back as bf16 directly.
        let raw = read_npy(&write_npy(&t, true)).unwrap();
        assert_eq!(raw, t);
    }

    #[test]
    fn f32_for_bf16_param_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly between two bf16 values (1 and 1 + 2^-7): ties to even gives 1.
        let t = Tensor::from_f32(vec![2], vec![1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]).unwrap();
        let b = to_param_dtype(t, DType::BF16).unwrap();
        assert_eq!(b.to_f64_vec(), vec![1.0, 1.0 + 4.0 / 256.0]);
    }

    #[test]
    fn dtype_mismatch_names_both() {
        let t = Tensor::from_f32(vec![1], vec![1.0]).unwrap();
        let e = to_param_dtype(t, DType::I32).unwrap_err();
        assert!(e.contains("i32") && e.contains("f32"), "{e}");
        let t = Tensor::from_i32(vec![1], vec![1]).unwrap();
        let e = to_param_dtype(t, DType::F32).unwrap_err();
        assert!(e.contains("i32") && e.contains("f32"), "{e}");
    }

    fn npy_of<T: npyz::AutoSerialize>(shape: &[u64], v: Vec<T>) -> Vec<u8> {
        write_vec(shape, v.into_iter())
    }

    #[test]
    fn conversions_on_read() {
        let t = read_npy(&npy_of(&[2], vec![1.5f64, -2.0])).unwrap();
        assert_eq!(t, Tensor::from_f32(vec![2], vec![1.5, -2.0]).unwrap());
        let t = read_npy(&npy_of(&[3], vec![1i64, -2, 3])).unwrap();
        assert_eq!(t, Tensor::from_i32(vec![3], vec![1, -2, 3]).unwrap());
        let e = read_npy(&npy_of(&[1], vec![1i64 << 40])).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = read_npy(&npy_of(&[1], vec![1u32])).unwrap_err();
        assert!(e.contains("unsupported dtype"), "{e}");
    }

    #[test]
    fn fortran_order_is_refused() {
        let mut buf = Vec::new();
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[2, 2])
                .order(Order::Fortran)
                .writer(&mut buf)
                .begin_nd()
                .unwrap();
            w.extend([1.0f32, 2.0, 3.0, 4.0]).unwrap();
            w.finish().unwrap();
        }
        let e = read_npy(&buf).unwrap_err();
        assert!(e.contains("Fortran"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let good = write_npy(&Tensor::from_f32(vec![4, 4], vec![0.5; 16]).unwrap(), false);
        for cut in 0..good.len() {
            assert!(read_npy(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(read_npy(&longer).is_err());
        assert!(read_npy(b"").is_err());
        assert!(read_npy(b"hello, world, this is not numpy").is_err());
        let mut noise = good.clone();
        for (i, b) in noise.iter_mut().enumerate().skip(10) {
            *b = (i * 37 % 251) as u8;
        }
        assert!(read_npy(&noise).is_err());
    }

    fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn hostile_headers_are_errors() {
        // Shapes whose products overflow u64, or with a zero that hides huge strides.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }\n";
        assert!(read_npy(&with_header(h, &[])).is_err());
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 18446744073709551615, 3), }\n";
        assert!(read_npy(&with_header(h, &[])).is_err());
        let deep = format!("{{'descr': {}'<f4'{}, 'shape': (1,)}}", "[".repeat(5000), "]".repeat(5000));
        assert!(read_npy(&with_header(&deep, &[0; 4])).is_err());
        let h = "{'descr': '<f4', 'fortran_order': False, }\n";
        assert!(read_npy(&with_header(h, &[])).is_err());
        let h = "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }\n";
        assert!(read_npy(&with_header(h, &[1, 7])).is_err());
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        assert_eq!(read_npy(&with_header(h, &[0; 8])).unwrap(), Tensor::from_f32(vec![2], vec![0.0, 0.0]).unwrap());
    }
}
