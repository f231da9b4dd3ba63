//! Model stage: durations as Istio resources write them (`10s`, `1.5s`,
//! `500ms`, `1h30m`): Go's `time.ParseDuration` syntax, which is what the
//! Istio API accepts for `google.protobuf.Duration` fields in YAML.

use std::time::Duration;

/// Parses a Go-style duration. Negative durations are rejected.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("negative duration {input:?}"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if number_len == 0 {
            return Err(format!("invalid duration {input:?}: expected a number"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .bytes()
            .take_while(|b| !b.is_ascii_digit() && *b != b'.')
            .count();
        if unit_len == 0 {
            return Err(format!(
                "invalid duration {input:?}: missing unit (ns, us, ms, s, m, h)"
            ));
        }
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("invalid duration {input:?}: unknown unit {unit:?}")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("invalid duration {input:?}: bad number {number:?}"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("invalid duration {input:?}: number too large"))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        let mut scale = unit_nanos;
        for digit in fraction.bytes().take(18) {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| format!("invalid duration {input:?}: too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Envoy's config dump does (`"1.500s"`).
pub fn to_proto_json(duration: Duration) -> String {
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        format!("{}s", duration.as_secs())
    } else {
        let frac = format!("{nanos:09}");
        format!("{}.{}s", duration.as_secs(), frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.5s", Duration::from_millis(500)),
            (".25s", Duration::from_millis(250)),
            ("500ms", Duration::from_millis(500)),
            ("1h30m", Duration::from_secs(5400)),
            ("3m", Duration::from_secs(180)),
            ("10us", Duration::from_micros(10)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
        for bad in ["", "10", "s", "1x", "-1s", "1..5s", "1.5.s"] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formats_like_protobuf_json() {
        assert_eq!(to_proto_json(Duration::from_secs(10)), "10s");
        assert_eq!(to_proto_json(Duration::from_millis(1500)), "1.5s");
        assert_eq!(to_proto_json(Duration::ZERO), "0s");
    }
}
