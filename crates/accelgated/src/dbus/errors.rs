//! The one boundary where engine errors become D-Bus errors, and the parsing of options
//! dictionaries into typed arguments.

use std::collections::HashMap;

use accelgate_proto::AccelError;
use zbus::OwnedVariant;

use crate::core::CoreError;

impl From<CoreError> for AccelError {
    fn from(e: CoreError) -> AccelError {
        AccelError::new(e.kind(), e.message())
    }
}

/// Options dictionaries (`a{sv}`) of the calls that take one.
pub type Options = HashMap<String, OwnedVariant>;

/// Refuses options this call does not know, so a typo is not silently ignored.
pub fn check_option_keys(options: &Options, known: &[&str]) -> Result<(), AccelError> {
    match options.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(AccelError::InvalidArgument(format!(
            "unknown option '{}'; known: {}",
            k.chars().take(64).collect::<String>(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))),
        None => Ok(()),
    }
}

/// `options[key]` as a bool; absent is false, any other type is an error.
pub fn option_bool(options: &Options, key: &str) -> Result<bool, AccelError> {
    match options.get(key) {
        None => Ok(false),
        Some(v) => bool::try_from(v.clone())
            .map_err(|_| AccelError::InvalidArgument(format!("option {key} must be a boolean"))),
    }
}

/// `options[key]` as bytes (`ay`); absent is `None`.
pub fn option_bytes(options: &Options, key: &str) -> Result<Option<Vec<u8>>, AccelError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => Vec::<u8>::try_from(v.clone()).map(Some).map_err(|_| {
            AccelError::InvalidArgument(format!("option {key} must be a byte array (ay)"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accelgate_proto::ErrorKind;
    use zbus::Variant as Value;

    fn opts(pairs: &[(&str, Value<'_>)]) -> Options {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn options_are_strict() {
        let o = opts(&[("force", Value::Bool(true))]);
        assert!(check_option_keys(&o, &["force"]).is_ok());
        assert!(matches!(
            check_option_keys(&o, &[]),
            Err(AccelError::InvalidArgument(m)) if m.contains("'force'") && m.contains("none")
        ));
        assert!(option_bool(&o, "force").unwrap());
        assert!(!option_bool(&opts(&[]), "force").unwrap());
        assert!(option_bool(&opts(&[("force", Value::U32(1))]), "force").is_err());
        assert_eq!(option_bytes(&opts(&[]), "signature").unwrap(), None);
        assert!(option_bytes(&o, "force").is_err());
    }

    #[test]
    fn every_engine_error_keeps_its_kind_across_the_boundary() {
        for (core, kind) in [
            (CoreError::Busy("b".into()), ErrorKind::Busy),
            (CoreError::Locked("l".into()), ErrorKind::Locked),
            (
                CoreError::Window(accelgate_hw::WindowError::ZeroCount),
                ErrorKind::InvalidArgument,
            ),
            (
                CoreError::NotAuthorized("n".into()),
                ErrorKind::NotAuthorized,
            ),
        ] {
            let e = AccelError::from(core);
            assert_eq!(e.error_kind(), Some(kind));
        }
    }
}
