//! Routing: method + path -> (keystore, operation, key id), or the precise XKS error.
//! Prefixes are matched exactly; `/kms/xks/v1` is never searched for inside arbitrary paths.

use crate::error::Error;
use crate::xks::valid_key_id;
pub use crate::xks::Operation;

/// A routed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'p> {
    /// Index of the keystore in config order.
    pub keystore: usize,
    /// Operation.
    pub op: Operation,
    /// External key id; empty for health.
    pub key_id: &'p str,
}

/// Parses what follows `<prefix>/kms/xks/v1`.
fn operation(rest: &str) -> Option<(Operation, &str)> {
    if rest == "/health" {
        return Some((Operation::Health, ""));
    }
    let (key_id, op) = rest.strip_prefix("/keys/")?.rsplit_once('/')?;
    let op = match op {
        "metadata" => Operation::Metadata,
        "encrypt" => Operation::Encrypt,
        "decrypt" => Operation::Decrypt,
        _ => return None,
    };
    valid_key_id(key_id).then_some((op, key_id))
}

/// Routes `path` against the keystores' API bases (`<prefix>/kms/xks/v1`). A known API path
/// with a method other than POST is 405; anything else unknown is InvalidUriPathException.
pub fn route<'p>(
    api_bases: &[String],
    method: &http::Method,
    path: &'p str,
    query: Option<&str>,
) -> Result<Route<'p>, Error> {
    // Among the bases the path starts with and whose remainder is an operation path, the
    // longest wins: a prefix may legitimately contain another keystore's whole API path.
    let (keystore, (op, key_id)) = api_bases
        .iter()
        .enumerate()
        .filter_map(|(i, base)| operation(path.strip_prefix(base.as_str())?).map(|o| (i, o)))
        .max_by_key(|(i, _)| api_bases[*i].len())
        .ok_or(Error::InvalidUriPath)?;
    if method != http::Method::POST {
        return Err(Error::MethodNotAllowed);
    }
    // The XKS API never uses a query string, and SigV4 here signs an empty one.
    if query.is_some() {
        return Err(Error::InvalidUriPath);
    }
    Ok(Route { keystore, op, key_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn bases() -> Vec<String> {
        ["/a/kms/xks/v1", "/kms/xks/v1", "/a/b/kms/xks/v1"]
            .map(String::from)
            .to_vec()
    }

    fn ok(path: &str) -> Route<'_> {
        route(&bases(), &Method::POST, path, None).unwrap()
    }

    #[test]
    fn routes_each_operation_to_its_keystore() {
        assert_eq!(
            ok("/a/kms/xks/v1/health"),
            Route {
                keystore: 0,
                op: Operation::Health,
                key_id: ""
            }
        );
        assert_eq!(
            ok("/kms/xks/v1/keys/k.1/encrypt"),
            Route {
                keystore: 1,
                op: Operation::Encrypt,
                key_id: "k.1"
            }
        );
        assert_eq!(ok("/a/b/kms/xks/v1/keys/k/decrypt").keystore, 2);
        assert_eq!(ok("/a/kms/xks/v1/keys/k_2/metadata").op, Operation::Metadata);
    }

    #[test]
    fn unknown_paths_are_invalid_uri_path() {
        for p in [
            "/a/invalid/kms/xks/v1/health",
            "/a/kms/xks/v2/health",
            "/a/kms/xks/v1/keys/foo/sign",
            "/a/kms/xks/v1/keys//encrypt",
            "/a/kms/xks/v1/keys/a/b/encrypt",
            "/a/kms/xks/v1/health/",
            "/x/kms/xks/v1/health",
            "/",
            "/a/kms/xks/v1/keys/%41/encrypt",
        ] {
            assert!(
                matches!(
                    route(&bases(), &Method::POST, p, None),
                    Err(Error::InvalidUriPath)
                ),
                "{p}"
            );
        }
        assert!(matches!(
            route(&bases(), &Method::POST, "/a/kms/xks/v1/health", Some("x=1")),
            Err(Error::InvalidUriPath)
        ));
    }

    #[test]
    fn a_prefix_containing_another_api_base_routes_to_its_own_keystore() {
        let bases: Vec<String> = ["/q/kms/xks/v1", "/q/kms/xks/v1/nested/kms/xks/v1"]
            .map(String::from)
            .to_vec();
        let r = route(
            &bases,
            &Method::POST,
            "/q/kms/xks/v1/nested/kms/xks/v1/health",
            None,
        )
        .unwrap();
        assert_eq!(r.keystore, 1);
        let r = route(&bases, &Method::POST, "/q/kms/xks/v1/health", None).unwrap();
        assert_eq!(r.keystore, 0);
    }

    #[test]
    fn get_on_api_paths_is_method_not_allowed() {
        for p in [
            "/a/kms/xks/v1/health",
            "/a/kms/xks/v1/keys/k/encrypt",
            "/a/kms/xks/v1/keys/k/decrypt",
            "/a/kms/xks/v1/keys/k/metadata",
        ] {
            assert!(
                matches!(
                    route(&bases(), &Method::GET, p, None),
                    Err(Error::MethodNotAllowed)
                ),
                "{p}"
            );
        }
    }
}
