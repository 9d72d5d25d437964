//! `sigv4_header`: SigV4 verification (`CredentialSet::verify`) of an HTTP request written as
//! text, in the layout of AWS's signing test suite:
//!
//! ```text
//! POST /kms/xks/v1/keys/k/encrypt HTTP/1.1
//! Host:example.amazonaws.com
//! X-Amz-Date:20150830T123600Z
//! Authorization:AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...
//!
//! <body>
//! ```
//!
//! Header lines `x-fuzz-*` steer the target and are not sent:
//! - `x-fuzz-now: <YYYYMMDDTHHMMSSZ>`: the proxy clock (default: the request's X-Amz-Date, so
//!   that the clock-skew check does not stop every input).
//! - `x-fuzz-sign: <n>` switches to *signed mode*: the target signs the request itself with an
//!   independent SigV4 signer (every header signed, AWS's trim-and-collapse canonical values),
//!   replacing `Authorization` and `X-Amz-Date`, then applies mutation `n % 8` (0 = none).
//!   `x-fuzz-region` and `x-fuzz-key` (0 or 1) pick the scope region and credential.
//!
//! Invariants:
//! - nothing panics;
//! - without `x-fuzz-sign`, verification never succeeds: the fuzzer does not know the secrets,
//!   so a verifying input would be a forgery (a bug);
//! - in signed mode, the untouched request verifies and names the signing key and region;
//!   each mutation that changes signed content (body byte, method, path, signature bit, secret,
//!   a signed header's value, the date by one second, dropping a signed header) makes it fail;
//!   adding an unsigned header does not;
//! - a request signed by the crate's own `sigv4::sign` (used by bench and quickstart) with the
//!   same host, content type, path and body verifies too.
#![no_main]

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use xks_bridge::auth::sigv4::{self, Credential, CredentialSet};

/// (access key id, secret): AWS's test-suite credential and an XKS-shaped one.
const CREDS: [(&str, &str); 2] = [
    ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    ("ABCDEFGHIJKLMNOPQRST", "fuzz-secret-fuzz-secret-fuzz-secret-0123"),
];
const SERVICE: &str = "kms-xks-proxy";
const DEFAULT_DATE: &str = "20150830T123600Z";

fn creds() -> &'static CredentialSet {
    static SET: OnceLock<CredentialSet> = OnceLock::new();
    SET.get_or_init(|| {
        CredentialSet::new(
            CREDS
                .iter()
                .map(|(id, secret)| Credential::new(id.to_string(), secret.to_string().into()))
                .collect(),
            Vec::new(),
        )
    })
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse(data: &[u8]) -> Option<Request> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], data[i + 2..].to_vec()),
        None => (data, Vec::new()),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next().unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        // As an HTTP server hands them over: optional whitespace around values removed.
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn amz_date(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc().into())
}

fn format_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(t).format(fmt).unwrap()
}

fn take(headers: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let i = headers.iter().position(|(n, _)| n.eq_ignore_ascii_case(name))?;
    Some(headers.remove(i).1)
}

fn header_map(headers: &[(String, String)]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
        let value = HeaderValue::from_str(v).ok()?;
        map.append(name, value);
    }
    Some(map)
}

fuzz_target!(|data: &[u8]| {
    let Some(mut req) = parse(data) else { return };
    let now_override = take(&mut req.headers, "x-fuzz-now");
    let sign = take(&mut req.headers, "x-fuzz-sign");
    let region = take(&mut req.headers, "x-fuzz-region");
    let key = take(&mut req.headers, "x-fuzz-key");
    req.headers
        .retain(|(n, _)| !n.to_ascii_lowercase().starts_with("x-fuzz-"));
    match sign {
        None => unsigned(req, now_override),
        Some(m) => signed(
            req,
            now_override.as_deref(),
            m.parse::<u32>().unwrap_or(0),
            region.as_deref().unwrap_or("us-east-1"),
            key.and_then(|k| k.parse::<usize>().ok()).unwrap_or(0) % CREDS.len(),
        ),
    }
});

/// Arbitrary headers: must never verify.
fn unsigned(req: Request, now_override: Option<String>) {
    // Invalid names or values would be refused by the HTTP layer; skip only those headers.
    let mut map = HeaderMap::new();
    for (n, v) in &req.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
            map.append(name, value);
        }
    }
    let now = now_override
        .as_deref()
        .and_then(amz_date)
        .or_else(|| {
            map.get("x-amz-date")
                .and_then(|v| v.to_str().ok())
                .and_then(amz_date)
        })
        .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160));
    let r = creds().verify(&req.method, &req.path, &map, &req.body, now);
    assert!(r.is_err(), "an input the fuzzer made up verified: {r:?}");
}

/// Canonical value of one header per SigV4: each value trimmed, runs of spaces collapsed,
/// multiple values joined with commas.
fn canonical_value(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| {
            let mut out = String::new();
            for c in v.trim_matches(' ').chars() {
                if !(c == ' ' && out.ends_with(' ')) {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// An independent SigV4 signer: returns the Authorization value.
fn reference_sign(
    req: &Request,
    headers: &[(String, String)],
    date: &str,
    region: &str,
    (akid, secret): (&str, &str),
) -> String {
    let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let mut canonical = format!("{}\n{}\n\n", req.method, req.path);
    for name in &names {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        canonical.push_str(&format!("{name}:{}\n", canonical_value(&values)));
    }
    let signed = names.join(";");
    canonical.push_str(&format!("\n{signed}\n{}", hex::encode(Sha256::digest(&req.body))));
    let scope = format!("{}/{region}/{SERVICE}/aws4_request", &date[..8]);
    let sts = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), &date.as_bytes()[..8]);
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, SERVICE.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let sig = hex::encode(hmac(&k, sts.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={signed}, Signature={sig}")
}

fn signed(mut req: Request, now_override: Option<&str>, mutation: u32, region: &str, key: usize) {
    // Outside these, a failure is the verifier's documented choice, not a disagreement:
    // regions are plain names; header names must be valid; values must be visible ASCII
    // without tabs (SigV4 implementations disagree on whether tabs collapse like spaces).
    if !region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return;
    }
    let date = now_override
        .filter(|d| amz_date(d).is_some())
        .unwrap_or(DEFAULT_DATE)
        .to_owned();
    let now = amz_date(&date).unwrap();
    take(&mut req.headers, "authorization");
    while take(&mut req.headers, "x-amz-date").is_some() {}
    req.headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
    if !req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.headers.push(("Host".into(), "example.amazonaws.com".into()));
    }
    req.headers.push(("X-Amz-Date".into(), date.clone()));
    let valid = req.headers.iter().all(|(n, v)| {
        HeaderName::from_bytes(n.as_bytes()).is_ok() && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
    });
    if !valid || req.method.is_empty() || req.path.contains('\n') {
        return;
    }
    let authorization = reference_sign(&req, &req.headers, &date, region, CREDS[key]);
    let mut headers = req.headers.clone();
    headers.push(("Authorization".into(), authorization.clone()));
    let map = header_map(&headers).expect("valid headers");

    let ok = creds().verify(&req.method, &req.path, &map, &req.body, now);
    match &ok {
        Ok(v) => {
            assert_eq!(v.access_key_id, CREDS[key].0);
            assert_eq!(v.region, region);
        }
        Err(e) => panic!("a correctly signed request was refused: {e:?}"),
    }

    let refuse = |method: &str, path: &str, map: &HeaderMap, body: &[u8], what: &str| {
        let r = creds().verify(method, path, map, body, now);
        assert!(r.is_err(), "{what}: the altered request still verified");
    };
    let signed_names: Vec<String> = {
        let mut n: Vec<String> = req.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        n.sort();
        n.dedup();
        n
    };
    let pick = (mutation / 8) as usize;
    match mutation % 8 {
        0 => {}
        1 => {
            let mut body = req.body.clone();
            let at = pick % body.len().max(1);
            match body.get_mut(at) {
                Some(b) => *b ^= 1 << (mutation % 7),
                None => body.push(b'x'),
            }
            refuse(&req.method, &req.path, &map, &body, "body changed");
        }
        2 => {
            let method = if req.method == "POST" { "GET" } else { "POST" };
            refuse(method, &req.path, &map, &req.body, "method changed");
        }
        3 => {
            let path = format!("{}x", req.path);
            refuse(&req.method, &path, &map, &req.body, "path changed");
        }
        4 => {
            let sig_at = authorization.rfind("Signature=").unwrap() + "Signature=".len();
            let mut sig = hex::decode(&authorization[sig_at..]).unwrap();
            sig[pick % 32] ^= 1 << (mutation % 5);
            let forged = format!("{}{}", &authorization[..sig_at], hex::encode(sig));
            let mut m = map.clone();
            m.insert("authorization", HeaderValue::from_str(&forged).unwrap());
            refuse(&req.method, &req.path, &m, &req.body, "signature bit flipped");
        }
        5 => {
            let wrong = (CREDS[key].0, "not-the-secret");
            let mut m = map.clone();
            let a = reference_sign(&req, &req.headers, &date, region, wrong);
            m.insert("authorization", HeaderValue::from_str(&a).unwrap());
            refuse(
                &req.method,
                &req.path,
                &m,
                &req.body,
                "signed with another secret",
            );
        }
        6 => {
            let name = &signed_names[pick % signed_names.len()];
            let mut h = req.headers.clone();
            if pick.is_multiple_of(2) {
                // Change the value (a non-space character, so it is not trimmed away).
                let i = h.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)).unwrap();
                h[i].1.push('x');
            } else {
                h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            }
            h.push(("Authorization".into(), authorization.clone()));
            let m = header_map(&h).expect("valid headers");
            refuse(
                &req.method,
                &req.path,
                &m,
                &req.body,
                "signed header changed or dropped",
            );
        }
        _ => {
            // One second later in X-Amz-Date (same credential scope day or not): must fail.
            // An unsigned extra header, on the other hand, must not matter.
            let later = format_date(now + Duration::from_secs(1));
            let mut m = map.clone();
            m.insert("x-amz-date", HeaderValue::from_str(&later).unwrap());
            refuse(&req.method, &req.path, &m, &req.body, "date changed");
            let mut m = map.clone();
            m.append("x-unsigned-extra", HeaderValue::from_static("1"));
            if !signed_names.iter().any(|n| n == "x-unsigned-extra") {
                let r = creds().verify(&req.method, &req.path, &m, &req.body, now);
                assert!(r.is_ok(), "an unsigned header broke verification: {r:?}");
            }
        }
    }

    // The crate's own signer (bench, quickstart) must agree with its verifier.
    let host = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|h| h.1.clone());
    let ct = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|h| h.1.clone())
        .unwrap_or_else(|| "application/json".into());
    if let Some(host) = host {
        let s = sigv4::sign(
            &req.path,
            &host,
            &ct,
            &req.body,
            CREDS[key].0,
            CREDS[key].1,
            region,
            now,
        );
        let h = vec![
            ("content-type".to_owned(), ct),
            ("host".to_owned(), host),
            ("x-amz-date".to_owned(), s.amz_date),
            ("authorization".to_owned(), s.authorization),
        ];
        let m = header_map(&h).expect("valid headers");
        let r = creds().verify("POST", &req.path, &m, &req.body, now);
        assert!(r.is_ok(), "sigv4::sign output refused by the verifier: {r:?}");
    }
}
