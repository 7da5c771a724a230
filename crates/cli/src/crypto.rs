//! `wxhub crypto ...`: the message-crypto tools for debugging captured callbacks.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use wxhub_crypto::{AesKey, Crypt, KeySlot, msg_signature, random_nonce, signature};
use wxhub_message::{Limits, encrypted_envelope, parse_envelope, xml::parse_document};

use crate::CliError;

#[derive(Debug, Subcommand)]
pub enum CryptoCommand {
    /// Verify and decrypt an encrypted callback body read from stdin; print the message XML.
    Decrypt(DecryptArgs),
    /// Encrypt a message XML read from stdin into WeChat's encrypted reply envelope.
    Encrypt(EncryptArgs),
    /// Answer a URL-verification GET: print what must be sent back to WeChat.
    VerifyUrl(VerifyUrlArgs),
    /// Print the signature (`--encrypt` given: the msg_signature) of the parameters.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Message verification token.
    #[arg(long)]
    token: String,
    /// The 43-character EncodingAESKey.
    #[arg(long = "aes-key")]
    aes_key: String,
    /// Expected appid (component appid for third-party platforms, corpid for WeCom).
    #[arg(long)]
    appid: String,
    #[arg(long)]
    timestamp: String,
    #[arg(long)]
    nonce: String,
    /// The `msg_signature` query parameter.
    #[arg(long = "msg-signature")]
    msg_signature: String,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[arg(long)]
    token: String,
    #[arg(long = "aes-key")]
    aes_key: String,
    #[arg(long)]
    appid: String,
    /// Defaults to now.
    #[arg(long)]
    timestamp: Option<String>,
    /// Defaults to a random 10-character nonce.
    #[arg(long)]
    nonce: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sig").required(true).args(["signature", "msg_signature"])))]
pub struct VerifyUrlArgs {
    #[arg(long)]
    token: String,
    #[arg(long)]
    timestamp: String,
    #[arg(long)]
    nonce: String,
    /// Official Account / Mini Program style: plain signature, echostr answered verbatim.
    #[arg(long)]
    signature: Option<String>,
    /// WeCom style: msg_signature over the encrypted echostr.
    #[arg(long = "msg-signature", requires_all = ["aes_key", "appid"])]
    msg_signature: Option<String>,
    #[arg(long = "aes-key")]
    aes_key: Option<String>,
    /// The corpid (WeCom) the echostr was encrypted for.
    #[arg(long)]
    appid: Option<String>,
    #[arg(long)]
    echostr: String,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[arg(long)]
    token: String,
    #[arg(long)]
    timestamp: String,
    #[arg(long)]
    nonce: String,
    /// The Encrypt value (or encrypted echostr) to include.
    #[arg(long)]
    encrypt: Option<String>,
}

pub fn run(cmd: CryptoCommand, stdin: &mut dyn Read) -> Result<String, CliError> {
    match cmd {
        CryptoCommand::Decrypt(a) => decrypt(a, stdin),
        CryptoCommand::Encrypt(a) => encrypt(a, stdin),
        CryptoCommand::VerifyUrl(a) => verify_url(a),
        CryptoCommand::Sign(a) => Ok(format!("{}\n", sign(&a))),
    }
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    stdin
        .read_to_end(&mut buf)
        .map_err(|e| CliError::new(format_args!("cannot read stdin: {e}")))?;
    Ok(buf)
}

fn crypt(token: &str, aes_key: &str, appid: &str) -> Result<Crypt, CliError> {
    let key = AesKey::parse(aes_key).map_err(CliError::new)?;
    Ok(Crypt::new(token, appid, key, None))
}

fn decrypt(a: DecryptArgs, stdin: &mut dyn Read) -> Result<String, CliError> {
    let crypt = crypt(&a.token, &a.aes_key, &a.appid)?;
    let body = read_stdin(stdin)?;
    let envelope = parse_envelope(&body, &Limits::default()).map_err(CliError::new)?;
    let encrypt = envelope
        .encrypt()
        .ok_or_else(|| CliError::new("XML envelope has no <Encrypt> element"))?;
    let decrypted = crypt
        .verify_and_decrypt(&a.msg_signature, &a.timestamp, &a.nonce, encrypt)
        .map_err(CliError::new)?;
    let message = decrypted.message_str().map_err(CliError::new)?;
    Ok(format!("{message}\n"))
}

fn encrypt(a: EncryptArgs, stdin: &mut dyn Read) -> Result<String, CliError> {
    let crypt = crypt(&a.token, &a.aes_key, &a.appid)?;
    let body = read_stdin(stdin)?;
    let text = std::str::from_utf8(&body).map_err(|_| CliError::new("XML is not valid UTF-8"))?;
    // A file's final newline is not part of the message.
    let message = text.strip_suffix('\n').unwrap_or(text);
    let message = message.strip_suffix('\r').unwrap_or(message);
    parse_document(message, &Limits::default()).map_err(CliError::new)?;
    let timestamp = match a.timestamp {
        Some(t) => t,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .map_err(|_| CliError::new("system clock is before 1970"))?,
    };
    let nonce = a.nonce.unwrap_or_else(|| random_nonce(10));
    let envelope = encrypted_envelope(&crypt, KeySlot::Current, message, &timestamp, &nonce)
        .map_err(CliError::new)?;
    Ok(format!("{envelope}\n"))
}

fn verify_url(a: VerifyUrlArgs) -> Result<String, CliError> {
    let answer = match (&a.signature, &a.msg_signature, &a.aes_key, &a.appid) {
        (Some(sig), None, _, _) => {
            wxhub_crypto::verify_signature(sig, &mut [&a.token, &a.timestamp, &a.nonce])
                .map_err(CliError::new)?;
            a.echostr
        }
        (None, Some(sig), Some(key), Some(appid)) => crypt(&a.token, key, appid)?
            .verify_url_encrypted(sig, &a.timestamp, &a.nonce, &a.echostr)
            .map_err(CliError::new)?,
        _ => {
            return Err(CliError::new(
                "give either --signature, or --msg-signature with --aes-key and --appid",
            ));
        }
    };
    Ok(format!("{answer}\n"))
}

fn sign(a: &SignArgs) -> String {
    match &a.encrypt {
        Some(encrypt) => msg_signature(&a.token, &a.timestamp, &a.nonce, encrypt),
        None => signature(&a.token, &a.timestamp, &a.nonce),
    }
}
