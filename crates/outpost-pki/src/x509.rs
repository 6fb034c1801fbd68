//! Reads what Outpost needs from an X.509 certificate (RFC 5280 §4.1): its serial number, subject, validity and
//! public key. rcgen writes certificates but does not read them without its `x509-parser` feature, and these four
//! fields are a short walk over the DER.

use crate::PkiError;

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject, as `CN=...` (with `O=` and `OU=` when present).
    pub subject: String,
    /// The subject's common name alone.
    pub common_name: String,
    /// The serial number, in lower-case hexadecimal.
    pub serial: String,
    /// The start of its validity, in Unix seconds.
    pub not_before: i64,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
    /// The subject's public key (the bits of `subjectPublicKey`).
    pub public_key: Vec<u8>,
}

/// How close a certificate is to the end of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateState {
    /// Less than [`RENEWAL_POINT`] of its life has passed.
    Valid,
    /// Past [`RENEWAL_POINT`] of its life: it should have been renewed.
    Expiring,
    /// Past its `notAfter`.
    Expired,
}

/// The part of a certificate's life after which it is renewed: 80 %, as a fraction (numerator, denominator).
pub const RENEWAL_POINT: (i64, i64) = (4, 5);

impl CertificateInfo {
    /// When the certificate is due for renewal: [`RENEWAL_POINT`] of the way from `notBefore` to `notAfter`.
    pub fn renewal_due_at(&self) -> i64 {
        let life = i128::from(self.not_after - self.not_before);
        let (numerator, denominator) = RENEWAL_POINT;
        self.not_before + (life * i128::from(numerator) / i128::from(denominator)) as i64
    }

    /// Whether the certificate is due for renewal at `now` (Unix seconds).
    pub fn renewal_due(&self, now: i64) -> bool {
        now >= self.renewal_due_at()
    }

    /// Its state at `now` (Unix seconds).
    pub fn state(&self, now: i64) -> CertificateState {
        if now >= self.not_after {
            CertificateState::Expired
        } else if self.renewal_due(now) {
            CertificateState::Expiring
        } else {
            CertificateState::Valid
        }
    }
}

impl std::fmt::Display for CertificateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Valid => "valid",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
        })
    }
}

/// Reads every certificate in PEM text, in order.
pub fn inspect_pem(pem: &str) -> Result<Vec<CertificateInfo>, PkiError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|der| {
            let der = der.map_err(|source| PkiError::Io {
                path: "<pem>".into(),
                source,
            })?;
            inspect(&der)
        })
        .collect()
}

/// Reads one DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    let mut input = der;
    let certificate = expect(&mut input, SEQUENCE, "Certificate")?;
    let mut certificate = certificate;
    let mut tbs = expect(&mut certificate, SEQUENCE, "TBSCertificate")?;
    if tbs.first() == Some(&VERSION) {
        read(&mut tbs)?;
    }
    let serial = expect(&mut tbs, INTEGER, "serialNumber")?;
    expect(&mut tbs, SEQUENCE, "signature")?;
    expect(&mut tbs, SEQUENCE, "issuer")?;
    let mut validity = expect(&mut tbs, SEQUENCE, "validity")?;
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    let subject = name(expect(&mut tbs, SEQUENCE, "subject")?)?;
    let mut spki = expect(&mut tbs, SEQUENCE, "subjectPublicKeyInfo")?;
    expect(&mut spki, SEQUENCE, "algorithm")?;
    let bits = expect(&mut spki, BIT_STRING, "subjectPublicKey")?;
    let common_name = subject
        .iter()
        .find(|(label, _)| *label == "CN")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    Ok(CertificateInfo {
        subject: subject
            .iter()
            .map(|(label, value)| format!("{label}={value}"))
            .collect::<Vec<_>>()
            .join(", "),
        common_name,
        serial: serial.iter().fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        }),
        not_before,
        not_after,
        public_key: bits.get(1..).unwrap_or_default().to_vec(),
    })
}

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const VERSION: u8 = 0xa0;

fn malformed(what: &str) -> PkiError {
    PkiError::Malformed(what.to_owned())
}

/// Reads one tag-length-value and advances `input` past it.
fn read<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), PkiError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| malformed("truncated"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| malformed("truncated"))?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(malformed("a length"));
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < length {
        return Err(malformed("truncated"));
    }
    let (value, after) = rest.split_at(length);
    *input = after;
    Ok((tag, value))
}

fn expect<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<&'a [u8], PkiError> {
    match read(input)? {
        (found, value) if found == tag => Ok(value),
        _ => Err(malformed(what)),
    }
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`), as Unix seconds.
fn time(input: &mut &[u8]) -> Result<i64, PkiError> {
    let (tag, value) = read(input)?;
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or_else(|| malformed("a time"))?;
    let (year, rest) = match tag {
        UTC_TIME if text.len() >= 2 => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() >= 4 => (digits(&text[..4])?, &text[4..]),
        _ => return Err(malformed("a time")),
    };
    if rest.len() < 10 || !rest.ends_with('Z') {
        return Err(malformed("a time"));
    }
    let field = |at: usize| digits(&rest[at..at + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    Ok(days_from_civil(year, month, day) * 86_400 + seconds)
}

fn digits(text: &str) -> Result<i64, PkiError> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().map_err(|_| malformed("a time"))
    } else {
        Err(malformed("a time"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The attributes of a `Name` this crate prints, in order.
fn name(mut input: &[u8]) -> Result<Vec<(&'static str, String)>, PkiError> {
    let mut attributes = Vec::new();
    while !input.is_empty() {
        let mut set = expect(&mut input, SET, "a name")?;
        while !set.is_empty() {
            let mut pair = expect(&mut set, SEQUENCE, "a name")?;
            let oid = expect(&mut pair, OID, "a name")?;
            let (_, value) = read(&mut pair)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            attributes.push((label, String::from_utf8_lossy(value).into_owned()));
        }
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2049, 12, 31), 29_219);
    }

    #[test]
    fn a_certificate_shows_its_subject_serial_and_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["device.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device.example");
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2060, 6, 30);
        params.serial_number = Some(vec![0x01, 0x02, 0xff].into());
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let info = inspect(certificate.der()).unwrap();
        assert_eq!(info.subject, "CN=device.example");
        assert_eq!(info.common_name, "device.example");
        assert_eq!(info.serial, "0102ff");
        assert_eq!(info.not_before, days_from_civil(2030, 1, 2) * 86_400);
        assert_eq!(info.not_after, days_from_civil(2060, 6, 30) * 86_400);
        assert_eq!(info.public_key, key.public_key_raw());
    }

    #[test]
    fn renewal_is_due_at_four_fifths_of_the_life() {
        let info = CertificateInfo {
            subject: String::new(),
            common_name: String::new(),
            serial: String::new(),
            not_before: 1_000,
            not_after: 1_100,
            public_key: Vec::new(),
        };
        assert_eq!(info.renewal_due_at(), 1_080);
        assert!(!info.renewal_due(1_079));
        assert!(info.renewal_due(1_080));
        assert_eq!(info.state(1_050), CertificateState::Valid);
        assert_eq!(info.state(1_080), CertificateState::Expiring);
        assert_eq!(info.state(1_100), CertificateState::Expired);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(inspect(&[]).is_err());
        assert!(inspect(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(inspect(&[0x30, 0x03, 0x30, 0x01]).is_err());
    }
}
