//! Image references: `[registry/]repository[:tag|@digest]` with Docker's defaults.

use super::error::RegistryError;
use crate::digest::Sha256Digest;

/// Docker Hub's API host.
pub(crate) const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port) as named (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag or `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]` with Docker's defaults.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let bad = || RegistryError::Reference(s.to_owned());
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let numeric_port = |h: &str| {
            h.rsplit_once(':')
                .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || numeric_port(first) || first == "localhost" =>
            {
                if first.contains(':') && !numeric_port(first) {
                    return Err(bad());
                }
                (first.to_owned(), rest)
            }
            _ => ("docker.io".to_owned(), name),
        };
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (rest, None),
        };
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad());
        }
        let repository = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        let reference = match (digest, tag) {
            (Some(d), _) => {
                Sha256Digest::parse(d).map_err(|_| bad())?;
                d.to_owned()
            }
            (None, Some(t)) => {
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(bad());
                }
                t.to_owned()
            }
            (None, None) => "latest".to_owned(),
        };
        Ok(Reference {
            registry,
            repository,
            reference,
        })
    }

    /// The host the API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB
        } else {
            &self.registry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_docker_defaults() {
        let r = Reference::parse("hello:latest").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("docker.io", "library/hello", "latest")
        );
        assert_eq!(r.api_host(), DOCKER_HUB);
        let r = Reference::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "team/app", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.reference, d);
        for bad in ["", "UPPER", "a b", "x:", "x@sha256:zz", "a//b", "x:tag/y"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
