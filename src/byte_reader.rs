//! A bounds-checked little-endian cursor over a byte slice, shared by the decoders of
//! `kv` and `transport`. It never panics and never allocates: every read either returns
//! the bytes or says where the input ran out.

/// The input ended before a field did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncated {
    /// Byte offset where the field starts.
    pub offset: usize,
    /// How many bytes the field needs.
    pub needed: u64,
    /// How many bytes were left.
    pub available: usize,
}

/// A cursor over `data`. Invariant: `offset <= data.len()`.
pub(crate) struct ByteReader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> ByteReader<'a> {
        ByteReader { data, offset: 0 }
    }

    /// Where the next read starts.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.offset
    }

    /// Takes the next `len` bytes. `len` is a u64 so lengths read from the input can be
    /// checked before any conversion.
    pub(crate) fn bytes(&mut self, len: u64) -> Result<&'a [u8], Truncated> {
        let available = self.remaining();
        if len > available as u64 {
            return Err(Truncated { offset: self.offset, needed: len, available });
        }
        let start = self.offset;
        self.offset += len as usize;
        Ok(&self.data[start..self.offset])
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let bytes = self.bytes(N as u64)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields_in_order() {
        let data = [7, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'x'];
        let mut reader = ByteReader::new(&data);
        assert_eq!(reader.u8(), Ok(7));
        assert_eq!(reader.u32(), Ok(1));
        assert_eq!(reader.u64(), Ok(2));
        assert_eq!(reader.bytes(1), Ok(&b"x"[..]));
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn short_input_reports_offset_and_does_not_advance() {
        let mut reader = ByteReader::new(&[1, 2, 3]);
        reader.u8().unwrap();
        assert_eq!(reader.u32(), Err(Truncated { offset: 1, needed: 4, available: 2 }));
        assert_eq!(reader.offset(), 1);
        assert_eq!(reader.bytes(u64::MAX), Err(Truncated { offset: 1, needed: u64::MAX, available: 2 }));
    }
}
