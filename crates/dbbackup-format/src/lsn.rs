//! Log sequence numbers (`XLogRecPtr`) and their textual form `X/Y`.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers separated by '/', such as 0/3000028")]
pub struct LsnParseError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError { input: s.to_string() };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let l: Lsn = "0/3000028".parse().unwrap();
        assert_eq!(l.0, 0x300_0028);
        assert_eq!(l.to_string(), "0/3000028");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap().0, 0x16_B374_D848);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", "0/-1", "0x1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(v: u64) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }
    }
}
