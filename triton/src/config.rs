//! What the backend reads from the model's config.pbtxt (Triton hands it over as JSON).

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The parameter naming the model file, relative to the model version folder.
pub const MODEL_FILE: &str = "model_file";

/// The model file of version `version` of the model at `repository` (the model's folder), as
/// `config` names it. The message says what config.pbtxt lacks and how to write it.
pub fn model_file(config: &Value, repository: &Path, version: u64) -> Result<PathBuf, String> {
    let batch = config.get("max_batch_size").and_then(Value::as_i64).unwrap_or(0);
    if batch < 1 {
        // The IMAGE tensor then arrives without a batch dimension, and Triton cannot batch.
        return Err(format!(
            "max_batch_size is {batch}: the patchcore backend needs 1 or more (with dynamic_batching)"
        ));
    }
    let name = config
        .pointer(&format!("/parameters/{MODEL_FILE}/string_value"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            format!(
                "config.pbtxt has no parameter `{MODEL_FILE}`: add \
                 parameters {{ key: \"{MODEL_FILE}\" value: {{ string_value: \"model.patchcore\" }} }}"
            )
        })?;
    Ok(repository.join(version.to_string()).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_file_is_relative_to_the_version_folder() {
        let config = json!({"max_batch_size": 8, "parameters": {"model_file": {"string_value": "a.patchcore"}}});
        assert_eq!(model_file(&config, Path::new("/repo/pc"), 3), Ok(PathBuf::from("/repo/pc/3/a.patchcore")));
    }

    #[test]
    fn a_missing_parameter_or_batch_size_is_explained() {
        let no_file = json!({"max_batch_size": 8, "parameters": {}});
        assert!(model_file(&no_file, Path::new("/r"), 1).unwrap_err().contains("no parameter `model_file`: add"));
        let no_batch = json!({"max_batch_size": 0, "parameters": {"model_file": {"string_value": "a"}}});
        assert!(model_file(&no_batch, Path::new("/r"), 1).unwrap_err().starts_with("max_batch_size is 0"));
    }
}
