//! FTP commands as the gateway reads them from a client (RFC 959 §4, RFC 2228, RFC 2428,
//! RFC 4217): the verb, upper-cased, and the argument as raw bytes (file names travel in
//! whatever encoding the client and server use, and are passed on unchanged); and what
//! the gateway does with each verb.

/// One command line, its line ending removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: String,
    pub arg: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BadCommand {
    Empty,
    /// The verb is not 3 or 4 letters (RFC 959 §5.3.1).
    Verb,
    /// A NUL or bare CR inside the line: never sent by a real client, and a way to
    /// smuggle a second command to a server that splits lines differently.
    Control,
}

/// Parses a command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, BadCommand> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(BadCommand::Control);
    }
    // Telnet IP/DM sequences clients put before ABOR are not part of the verb.
    let start = line
        .iter()
        .position(|&b| b < 0x80 && b != b' ')
        .ok_or(BadCommand::Empty)?;
    let line = &line[start..];
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    if !(3..=4).contains(&verb.len()) || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Err(BadCommand::Verb);
    }
    Ok(Command {
        verb: String::from_utf8_lossy(verb).to_ascii_uppercase(),
        arg: arg.to_vec(),
    })
}

/// What the session does with a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Auth,
    Pbsz,
    Prot,
    /// Clear Command Channel: refused, the control connection stays encrypted.
    Ccc,
    User,
    Pass,
    Pasv,
    Epsv,
    /// Active mode, refused: the gateway never connects out to clients.
    Active,
    /// A command that moves data over the passive connection.
    Transfer,
    Feat,
    /// Reinitialize: refused, it would log the origin session out under our feet.
    Rein,
    Quit,
    /// Passed to the origin as it is.
    Other,
}

pub fn kind(verb: &str) -> Kind {
    match verb {
        "AUTH" => Kind::Auth,
        "PBSZ" => Kind::Pbsz,
        "PROT" => Kind::Prot,
        "CCC" => Kind::Ccc,
        "USER" => Kind::User,
        "PASS" => Kind::Pass,
        "PASV" => Kind::Pasv,
        "EPSV" => Kind::Epsv,
        "PORT" | "EPRT" | "LPRT" | "LPSV" => Kind::Active,
        "RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD" => Kind::Transfer,
        "FEAT" => Kind::Feat,
        "REIN" => Kind::Rein,
        "QUIT" => Kind::Quit,
        _ => Kind::Other,
    }
}

/// The argument as text for logs (never called for PASS).
pub fn arg_text(c: &Command) -> String {
    String::from_utf8_lossy(&c.arg).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_upper_cased_and_arguments_kept_as_bytes() {
        let c = parse(b"retr dir/na\xefve file.txt").unwrap();
        assert_eq!(c.verb, "RETR");
        assert_eq!(c.arg, b"dir/na\xefve file.txt");
        assert_eq!(
            parse(b"PASV").unwrap(),
            Command {
                verb: "PASV".into(),
                arg: vec![]
            }
        );
        assert_eq!(kind("RETR"), Kind::Transfer);
        assert_eq!(kind("EPRT"), Kind::Active);
        assert_eq!(kind("NOOP"), Kind::Other);
    }

    #[test]
    fn telnet_interrupts_before_abor_are_skipped() {
        assert_eq!(parse(b"\xff\xf4\xff\xf2ABOR").unwrap().verb, "ABOR");
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(parse(b""), Err(BadCommand::Empty));
        assert_eq!(parse(b"   "), Err(BadCommand::Empty));
        assert_eq!(parse(b"RETRIEVE x"), Err(BadCommand::Verb));
        assert_eq!(parse(b"R2 x"), Err(BadCommand::Verb));
        assert_eq!(parse(b"USER a\0b"), Err(BadCommand::Control));
        assert_eq!(parse(b"USER a\rPASS b"), Err(BadCommand::Control));
    }
}
