"""E-mail over SMTP with STARTTLS (smtplib): ``EHLO``, ``STARTTLS``, ``EHLO`` again, ``AUTH`` when a user is named.

The user and password are read from the env vars the config names, at the moment of sending. A server
that does not offer STARTTLS is refused (the password never goes in the clear) unless ``starttls = false``.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from rollbacklib.notify.base import Channel, Message, Request, SendError, secret


class Email(Channel):
    kind = "email"

    def request(self, message: Message) -> Request:
        s = self.settings
        how = "STARTTLS" if s.starttls else "no TLS"
        return Request("SMTP", f"smtp://{s.host}:{s.port} ({how}) from {s.sender} to {', '.join(s.to)}",
                       f"Subject: {message.subject}\n\n{message.text}")

    def _email(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = self.settings.sender, ", ".join(self.settings.to), message.subject
        mail.set_content(message.text)
        return mail

    def send(self, message: Message) -> dict:
        s = self.settings
        try:
            with smtplib.SMTP(s.host, s.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if s.starttls:
                    if not smtp.has_extn("starttls"):
                        raise SendError(f"{s.host}:{s.port} does not offer STARTTLS: not sent in the clear",
                                        retry=False)
                    context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if s.username_env:
                    smtp.login(secret(s.username_env, "the SMTP user"),
                               secret(s.password_env, "the SMTP password") if s.password_env else "")
                refused = smtp.send_message(self._email(message))
        except SendError:
            raise
        except smtplib.SMTPResponseException as err:
            raise SendError(f"SMTP {err.smtp_code}: {_text(err.smtp_error)}", err.smtp_code,
                            retry=err.smtp_code < 500) from None  # 4xx is transient, 5xx is not
        except (smtplib.SMTPException, OSError, ssl.SSLError) as err:
            raise SendError(f"{type(err).__name__}: {err}") from None
        if refused:
            raise SendError(f"refused recipients: {', '.join(refused)}")
        return {"smtp": "accepted", "to": list(s.to)}


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
