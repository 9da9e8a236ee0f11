//! Credentials (a Docker `config.json`) and the distribution spec's challenges.

use super::limits::MAX_DOCUMENT;
use super::reference::DOCKER_HUB;
use base64::Engine as _;
use serde::Deserialize;
use std::io::Read;

/// Registry credentials (redacted in `Debug`).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials `config_json` (a Docker `config.json`) holds for `registry`.
pub fn credentials_in(config_json: &[u8], registry: &str) -> Option<Credentials> {
    let config: DockerConfig = serde_json::from_slice(config_json).ok()?;
    let hub = registry == "docker.io";
    let entry = config.auths.iter().find_map(|(k, v)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let matches = host == registry
            || (hub && (host == "index.docker.io" || host == DOCKER_HUB || host == "docker.io"));
        matches.then_some(v)
    })?;
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = zeroize::Zeroizing::new(String::from_utf8(decoded).ok()?);
        let (u, p) = text.split_once(':')?;
        return Some(Credentials {
            username: u.to_owned(),
            password: zeroize::Zeroizing::new(p.to_owned()),
        });
    }
    Some(Credentials {
        username: entry.username.clone()?,
        password: zeroize::Zeroizing::new(entry.password.clone()?),
    })
}

/// Credentials for `registry` from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn credentials_for(registry: &str) -> Option<Credentials> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => std::path::PathBuf::from(d).join("config.json"),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_DOCUMENT)
        .read_to_end(&mut bytes)
        .ok()?;
    credentials_in(&bytes, registry)
}

/// Parses a `WWW-Authenticate` challenge: its scheme and parameters.
pub(super) fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.push((
            k.trim().trim_start_matches(',').trim().to_owned(),
            v.to_owned(),
        ));
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

pub(super) fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_docker_config() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:q");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"reg.example:5000":{{"username":"a","password":"b"}}}}}}"#
        );
        let c = credentials_in(cfg.as_bytes(), "docker.io").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:q"));
        let c = credentials_in(cfg.as_bytes(), "reg.example:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        assert!(credentials_in(cfg.as_bytes(), "other").is_none());
        assert_eq!(format!("{c:?}"), "Credentials(a, <redacted>)");
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/hello:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[2].1, "repository:library/hello:pull");
    }
}
