//! Social security card numbers (社会保障卡卡号). Formats differ by issuing region and
//! card generation, so the rule is structural: 9–20 upper-case letters and digits. The
//! issuing region travels beside the number and routes the look-up.

use crate::{Error, Result};

/// Validates and normalises (upper-cases) a card number.
pub fn parse(s: &str, field: &str) -> Result<String> {
    let s = s.trim().to_ascii_uppercase();
    if !(9..=20).contains(&s.len()) {
        return Err(Error::invalid(
            field,
            format!("card number must be 9–20 characters, got {}", s.len()),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return Err(Error::invalid(
            field,
            "card number may contain only letters and digits",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn card_numbers() {
        assert_eq!(super::parse("a12345678", "card_no").unwrap(), "A12345678");
        assert!(
            super::parse("A1234", "card_no")
                .unwrap_err()
                .to_string()
                .contains("card_no")
        );
        assert!(super::parse("A1234-5678", "card_no").is_err());
    }
}
