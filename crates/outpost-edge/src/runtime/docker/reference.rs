//! Image references, as far as pulling needs them: which registry serves an image (to choose its credentials) and
//! the exact reference to ask the daemon for.

use crate::runtime::RegistryCredential;

/// The registry the daemon pulls `image` from: the part before the first '/' when it looks like a host (it has a
/// '.' or a ':' or is `localhost`), Docker Hub (`docker.io`) otherwise.
pub(super) fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `image` with `:latest` added when it names neither a tag nor a digest: asking the daemon for a bare name would
/// pull every tag of the repository.
pub(super) fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// The credentials whose address is `image`'s registry (ignoring a scheme, a trailing '/' and case).
pub(super) fn credentials_for<'a>(
    image: &str,
    credentials: &'a [RegistryCredential],
) -> Option<&'a RegistryCredential> {
    let registry = registry_of(image);
    credentials.iter().find(|c| {
        let address = c.address.trim();
        let address = address
            .strip_prefix("https://")
            .or_else(|| address.strip_prefix("http://"))
            .unwrap_or(address);
        address.trim_end_matches('/').eq_ignore_ascii_case(registry)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(address: &str) -> RegistryCredential {
        RegistryCredential {
            address: address.into(),
            username: "u".into(),
            password: "p".into(),
        }
    }

    #[test]
    fn the_registry_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(
            registry_of("myacr.azurecr.io/filter:1.0"),
            "myacr.azurecr.io"
        );
        assert_eq!(registry_of("127.0.0.1:5000/filter"), "127.0.0.1:5000");
        assert_eq!(registry_of("registry:5000/a/b:1"), "registry:5000");
        assert_eq!(registry_of("localhost/filter"), "localhost");
    }

    #[test]
    fn images_without_a_host_come_from_docker_hub() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1.36"), "docker.io");
        assert_eq!(registry_of("azureiotedge/filter"), "docker.io");
    }

    #[test]
    fn a_reference_without_tag_or_digest_gets_latest() {
        assert_eq!(pull_reference("busybox"), "busybox:latest");
        assert_eq!(
            pull_reference("127.0.0.1:5000/filter"),
            "127.0.0.1:5000/filter:latest"
        );
        assert_eq!(
            pull_reference("127.0.0.1:5000/filter:1.0"),
            "127.0.0.1:5000/filter:1.0"
        );
        assert_eq!(pull_reference("a/b@sha256:0123"), "a/b@sha256:0123");
    }

    #[test]
    fn credentials_are_chosen_by_the_registry_address() {
        let creds = [
            credential("other.io"),
            credential("https://MyAcr.azurecr.io/"),
            credential("127.0.0.1:5000"),
        ];
        assert_eq!(
            credentials_for("myacr.azurecr.io/filter", &creds)
                .unwrap()
                .address,
            "https://MyAcr.azurecr.io/"
        );
        assert_eq!(
            credentials_for("127.0.0.1:5000/filter:1", &creds)
                .unwrap()
                .address,
            "127.0.0.1:5000"
        );
        assert!(credentials_for("busybox", &creds).is_none());
    }
}
