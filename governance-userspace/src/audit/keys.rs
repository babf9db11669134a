//! Signing keys: loading or creating the daemon's key, parsing a public key.

use super::*;

/// Load a 32-byte Ed25519 seed (64 hex digits, or 32 raw bytes), or create one with mode 0600.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    let key_err = |problem: &str| AuditError::Key {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(io_err("reading", path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{mode:o}"), "audit signing key is readable by others");
            }
            let seed = if bytes.len() == 32 {
                bytes.as_slice().try_into().ok()
            } else {
                from_hex::<32>(bytes.trim_ascii())
            };
            let seed =
                seed.ok_or_else(|| key_err("not 64 lowercase hex digits or 32 raw bytes"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| key_err(&format!("no random seed from the kernel: {e}")))?;
            let key = SigningKey::from_bytes(&seed);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err("creating", path))?;
            file.write_all(format!("{}\n", to_hex(&seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err("writing", path))?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            info!(
                path = %path.display(),
                public_key = %to_hex(key.verifying_key().as_bytes()),
                "audit log: created a signing key"
            );
            Ok(key)
        }
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// An Ed25519 public key given as 64 hex digits, or a file holding them (or the 32 raw bytes).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, AuditError> {
    let bad = |problem: String| AuditError::Key {
        path: PathBuf::from(s),
        problem,
    };
    let bytes: [u8; 32] = match from_hex::<32>(s.trim().as_bytes()) {
        Some(b) => b,
        None => {
            let raw = fs::read(s)
                .map_err(|e| bad(format!("neither 64 hex digits nor a readable file: {e}")))?;
            let text = String::from_utf8_lossy(&raw);
            match from_hex::<32>(text.trim().as_bytes()) {
                Some(b) => b,
                None => raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("not 64 hex digits or 32 raw bytes".into()))?,
            }
        }
    };
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("not an Ed25519 public key: {e}")))
}
