//! What a client's commands do: a message, `/nick`, `/who`, `/history`, `/help`
//! and a moderator's `/kick` and the like, each carried out in the room, answered to the client alone, or refused.

use crate::protocol::{ClientError, Command, Event, Frame, Protocol, check_text, help};
use crate::server::hub::{Ack, Member};
use crate::server::metrics::Metrics;

/// What a command came to, when it was not refused.
pub(crate) enum Outcome {
    /// Carried out in the room: the client is fed the room's frame `wait`
    /// (its echo, its notice), then `ack` when the request had an id.
    Done { wait: Ack, ack: Option<Frame> },
    /// Answered to this client alone (`/who`, `/help`).
    Answer(Frame),
}

/// Acts on one command of the request `id`; a refusal is the client's
/// error, for it alone.
pub(crate) async fn act<'a>(
    member: &mut Member,
    command: Command<'a>,
    id: Option<&str>,
    max_bytes: usize,
    protocol: Protocol,
    metrics: &Metrics,
) -> Result<Outcome, ClientError<'a>> {
    let ack = |seq| id.map(|id| Event::Ack { id: id.into(), seq }.encode(protocol));
    match command {
        Command::Say(message) => {
            check_text(message, max_bytes)?;
            match member.say(message).await {
                Ok((wait, seq)) => {
                    // Told to this session's next connection, so that it
                    // sends again only what did not get through.
                    if let Some(id) = id {
                        member.done(id);
                    }
                    Ok(Outcome::Done { wait, ack: ack(seq) })
                }
                Err(refusal) => {
                    if refusal == ClientError::ServerFull {
                        metrics.server_full.inc();
                    }
                    Err(refusal)
                }
            }
        }
        Command::Nick(name) => {
            let wait = member.rename(name).await?;
            tracing::Span::current().record("name", member.name());
            Ok(Outcome::Done { wait, ack: ack(None) })
        }
        Command::Who => {
            let mut who = member.who().await;
            if let Event::Who { id: answer_id, .. } = &mut who {
                *answer_id = id.map(|id| id.to_owned().into());
            }
            Ok(Outcome::Answer(who.encode(protocol)))
        }
        Command::History { limit, before } => {
            let mut earlier = member.history(limit, before).await?;
            if let Event::Earlier { id: answer_id, .. } = &mut earlier {
                *answer_id = id.map(|id| id.to_owned().into());
            }
            // Up to HISTORY_PAGE_BYTES of text, several times that as JSON:
            // counted until written, or refused while memory is short.
            let answer = member.charged(earlier.encode(protocol));
            answer.map(Outcome::Answer).ok_or(ClientError::HistoryUnavailable)
        }
        Command::Help => {
            let text = help(member.moderates());
            Ok(Outcome::Answer(Event::Notice { text }.encode(protocol)))
        }
        Command::Moderate(moderation) => {
            if !member.moderates() {
                return Err(ClientError::NotModerator);
            }
            let wait = member.moderate(&moderation).await?;
            Ok(Outcome::Done { wait, ack: ack(None) })
        }
        Command::MissingArgument(usage) => Err(ClientError::Usage { usage }),
        Command::Unknown(command) => Err(ClientError::UnknownCommand { command }),
    }
}
