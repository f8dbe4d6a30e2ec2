//! Byte sizes on the command line (`--doc-size 500KB`): a number, optionally with a fraction,
//! and a unit: `B`, decimal `KB`/`MB`/`GB` (powers of 1000, as "a 500 KB document" is meant) or
//! binary `KiB`/`MiB`/`GiB`. Case does not matter; a space before the unit is allowed.

/// Why a size did not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size: give a number and a unit, e.g. 500KB, 2MB, 64KiB or 0")]
    Invalid(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Bytes in `s`, e.g. `500KB` = 500,000, `1.5MiB` = 1,572,864, `0` = 0.
pub fn parse_size(s: &str) -> Result<usize, SizeError> {
    let invalid = || SizeError::Invalid(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(invalid());
    }
    let parse = |digits: &str| -> Result<u64, SizeError> {
        if digits.is_empty() {
            Ok(0)
        } else {
            digits
                .parse::<u64>()
                .map_err(|_| SizeError::TooLarge(s.to_string()))
        }
    };
    let too_large = || SizeError::TooLarge(s.to_string());
    let mut bytes = parse(whole)?.checked_mul(unit).ok_or_else(too_large)?;
    // The fraction in whole bytes, rounded down (at most 9 digits count: below a byte anyway).
    let digits = &fraction[..fraction.len().min(9)];
    if !digits.is_empty() {
        let scale = 10u64.pow(digits.len() as u32);
        bytes = bytes
            .checked_add(parse(digits)? * unit / scale)
            .ok_or_else(too_large)?;
    }
    usize::try_from(bytes).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("500KB"), Ok(500_000));
        assert_eq!(parse_size("500kb"), Ok(500_000));
        assert_eq!(parse_size("500 KB"), Ok(500_000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("0.5KB"), Ok(500));
        assert_eq!(parse_size(".5KB"), Ok(500));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "KB", "500XB", "-1", "1.2.3MB", "five", ".", "5 K B"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_size("99999999999999999999GB"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("18446744073709551615GB"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
