//! The `--endpoint` URL: scheme, host and port to connect to, and the authority that goes in
//! the Host header (and so into every signature) exactly as the user wrote it.

use super::error::EndpointError;

/// A parsed `--endpoint`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https` (true) or `http`.
    pub tls: bool,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `host[:port]` as given: the Host header, and so what the proxy verifies the signature with.
    pub authority: String,
}

impl Endpoint {
    /// Parses `https://HOST[:PORT]` or `http://HOST[:PORT]`, with at most a trailing `/`.
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let uri: http::Uri = text.parse().map_err(|_| EndpointError::NotUrl(text.to_owned()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(EndpointError::Scheme(text.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| EndpointError::NoHost(text.to_owned()))?;
        if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(EndpointError::NotAuthorityOnly(text.to_owned()));
        }
        Ok(Endpoint {
            tls,
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_to_host_port_and_authority() {
        let e = Endpoint::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.authority.as_str()),
            (true, "127.0.0.1", 8443, "127.0.0.1:8443")
        );
        let e = Endpoint::parse("http://[::1]/").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "::1", 80));
        assert_eq!(Endpoint::parse("https://xks.example.com").unwrap().port, 443);
        for bad in [
            "127.0.0.1:8443",
            "ftp://h",
            "https://h/kms/xks/v1",
            "https://u:p@h",
            "https://h?x=1",
            "",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
