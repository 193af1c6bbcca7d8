-- Signing keys encrypted at rest (SQLite). Keep in step with
-- ../postgres/0004_signing_keys_at_rest.sql.

-- The key-encryption key a row is sealed under: the fingerprint of an operator-held key (never
-- the key). NULL: the private key is in `private_jwk` in plaintext (dev mode without a
-- key-encryption key, or a row written before this migration; `podgate serve` with a
-- key-encryption key seals those at start).
ALTER TABLE signing_keys ADD COLUMN kek_id TEXT;

-- The private JWK sealed with XChaCha20-Poly1305 under that key, bound to the row's kid, kind,
-- alg and kek_id: `v1.` then base64url(nonce || ciphertext). Set exactly when `kek_id` is,
-- and then `private_jwk` is the empty string.
ALTER TABLE signing_keys ADD COLUMN sealed_jwk TEXT;
