//! Sealing again, bound to their names, the secret values earlier versions sealed unbound
//! (`v1`, see [`crate::crypto`]). An unbound value opens under any name, so whoever can write
//! the store could copy it under another secret's name; once every value is `v2`, such a copy
//! fails to open. The active node does it when it takes the role, in one fenced transaction
//! that only lands if no resource changed since it read them.

use crate::crypto::{is_unbound, KeyFile};
use crate::model::Secret;
use crate::store::{Plan, ResourceError, Resources};
use autogate_store::{Compare, TxnOp};

impl Resources {
    /// Seals every unbound secret value again, bound to its secret's name; returns the names
    /// of the secrets it sealed again (none when there was nothing to do). A value that does not
    /// open with `key` is left as it is (it is reported by the checks that open it).
    pub async fn reseal_unbound_secrets(
        &self,
        key: &KeyFile,
    ) -> Result<Vec<String>, ResourceError> {
        self.write(|snap| {
            let mut names = Vec::new();
            let mut ops = Vec::new();
            for secret in snap.all::<Secret>()? {
                if !is_unbound(&secret.value) {
                    continue;
                }
                let Ok(plain) = key.open(&secret.meta.name, &secret.value) else {
                    continue;
                };
                let mut next = secret.clone();
                next.value = key.seal(&secret.meta.name, &plain)?;
                ops.push(TxnOp::put(
                    self.key(crate::model::Kind::Secret, &secret.meta.name),
                    Self::encode(&next)?,
                ));
                names.push(secret.meta.name);
            }
            if ops.is_empty() {
                return Ok((None, names));
            }
            let compares = names
                .iter()
                .map(|n| Compare::exists(self.key(crate::model::Kind::Secret, n)))
                .collect();
            Ok((Some(Plan { compares, ops }), names))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unbound_values_are_sealed_again_bound_to_their_names() {
        let store = autogate_store::open(autogate_store::StoreOptions::Memory)
            .await
            .unwrap();
        let r = Resources::new(store, "c1");
        let key = KeyFile::from_bytes("key").unwrap();
        let mut old = Secret::new("prod-db", "the-prod-password", &key).unwrap();
        old.value = crate::crypto::seal_unbound(&key, b"the-prod-password");
        r.create(old).await.unwrap();
        r.create(Secret::new("lab-db", "lab", &key).unwrap())
            .await
            .unwrap();

        assert_eq!(
            r.reseal_unbound_secrets(&key).await.unwrap(),
            vec!["prod-db"]
        );
        let now: Secret = r.get("prod-db").await.unwrap().unwrap();
        assert!(!is_unbound(&now.value));
        assert_eq!(
            &*key.open_text("prod-db", &now.value).unwrap(),
            "the-prod-password"
        );
        // Copied under another name, it no longer opens.
        assert!(key.open("lab-db", &now.value).is_err());
        assert!(r.reseal_unbound_secrets(&key).await.unwrap().is_empty());
    }
}
