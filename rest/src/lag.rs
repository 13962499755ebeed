//! Sizes in query parameters (`lag=16MB`) and configuration values, read like Postgres/Patroni
//! read them: an integer (decimal, `0x` hex, leading-zero octal) or a decimal fraction, then an
//! optional unit `B`, `kB`, `MB`, `GB`, `TB` (case-sensitive, 1 kB = 1024 B).

/// Parse a size in bytes; `None` when the value is not a size (callers then apply no limit,
/// as Patroni does).
pub fn parse_size(raw: &str) -> Option<i64> {
    let value = raw.trim();
    let (number, unit) = match split_integer(value) {
        Some((n, rest)) if !rest.starts_with(['.', 'e', 'E']) => (n as f64, rest),
        _ => split_decimal(value)?,
    };
    let multiplier: f64 = match unit.trim() {
        "" => return Some(number.round() as i64),
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * multiplier;
    // A fractional amount of a unit is rounded to whole units of the next smaller one.
    let granule = if multiplier > 1.0 {
        multiplier / 1024.0
    } else {
        1.0
    };
    Some(((bytes / granule).round() * granule) as i64)
}

/// `strtol(…, base 0)`: sign, then hex, octal or decimal digits.
fn split_integer(s: &str) -> Option<(i64, &str)> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits_start) =
        if body.starts_with("0x") && body[2..].starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, 2)
        } else if body.starts_with('0') {
            (8, 0)
        } else {
            (10, 0)
        };
    let digits = &body[digits_start..];
    let len = digits.chars().take_while(|c| c.is_digit(radix)).count();
    if len == 0 {
        return None;
    }
    let magnitude = i64::from_str_radix(&digits[..len], radix).ok()?;
    Some((
        if negative { -magnitude } else { magnitude },
        &digits[len..],
    ))
}

/// `strtod`: `[-+]digits[.digits][e[-+]digits]`.
fn split_decimal(s: &str) -> Option<(f64, &str)> {
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'-' | b'+')) {
        end = 1;
    }
    let mantissa_start = end;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end < bytes.len() && bytes[end] == b'.' {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    if !s[mantissa_start..end].bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    if end < bytes.len() && matches!(bytes[end], b'e' | b'E') {
        let mut exp_end = end + 1;
        if matches!(bytes.get(exp_end), Some(b'-' | b'+')) {
            exp_end += 1;
        }
        let exp_digits = bytes[exp_end..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if exp_digits > 0 {
            end = exp_end + exp_digits;
        }
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("1048576", Some(1_048_576)),
            ("16kB", Some(16 * 1024)),
            ("64MB", Some(64 << 20)),
            ("1GB", Some(1 << 30)),
            ("1TB", Some(1 << 40)),
            (" 10 MB ", Some(10 << 20)),
            ("100B", Some(100)),
            ("0x400", Some(1024)),
            ("010", Some(8)),
            ("1.5MB", Some(1_572_864)),
            ("1e3", Some(1000)),
            ("-1", Some(-1)),
            ("16kb", None),
            ("16 KB", None),
            ("nonsense", None),
            ("", None),
            ("10s", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_size(raw), *expected, "parse_size({raw:?})");
        }
    }
}
