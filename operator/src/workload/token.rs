//! The sidecars' admin token: one Secret per application namespace, `weir-sidecar-token`
//! (key `token`), created on first need by the injector (before the pod that mounts it
//! exists) or by the workload controller, and read by the controller to push. Never
//! overwritten: a token in use stays valid; delete the Secret and restart the pods to rotate.

use crate::error::Error;
use crate::inject::patch::{TOKEN_KEY, TOKEN_SECRET};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};

/// 32 bytes of OS randomness, hex.
fn random_token() -> Result<String, Error> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(Error::SidecarTokenRandom)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn token_of(s: &Secret, namespace: &str) -> Result<String, Error> {
    s.data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::SidecarTokenKey {
            namespace: namespace.into(),
        })
}

/// The namespace's token, creating the Secret if it does not exist. `get` is limited by RBAC to
/// this Secret's name; `create` cannot be (see the chart's injector RBAC), and it only ever
/// makes a new object: an existing Secret of that name is answered 409 and then read.
pub async fn ensure(client: &kube::Client, namespace: &str) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source| Error::SidecarToken {
        namespace: namespace.into(),
        source,
    };
    if let Some(s) = api.get_opt(TOKEN_SECRET).await.map_err(err)? {
        return token_of(&s, namespace);
    }
    let secret = super::managed_secret(
        TOKEN_SECRET,
        [(
            TOKEN_KEY.to_string(),
            ByteString(random_token()?.into_bytes()),
        )]
        .into(),
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(namespace, "created the sidecar token Secret");
            token_of(&s, namespace)
        }
        // Someone (the other replica, the injector) was first: theirs is the token.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(TOKEN_SECRET).await.map_err(err)?;
            token_of(&s, namespace)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_hex() {
        let a = super::random_token().expect("randomness");
        let b = super::random_token().expect("randomness");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
