"""Sends a burst through herald's Bot API drop-in with an unmodified bot
library, as a bot would: every send at once, the library's default timeouts.

usage: send_burst.py ptb|aiogram BASE_URL TOKEN COUNT CHATS FIRST_CHAT

Prints one JSON line: {"library", "sent", "errors": [..], "message_ids": N}.
Exits 1 when any call raised.
"""

import asyncio
import json
import sys


def texts(library, count, chats, first_chat):
    for i in range(count):
        yield first_chat + i % chats, f"{library}-{i:04d}"


async def with_ptb(base, token, burst):
    from telegram.ext import ApplicationBuilder

    application = ApplicationBuilder().token(token).base_url(f"{base}/bot").build()
    bot = application.bot
    async with bot:
        calls = [bot.send_message(chat_id=chat, text=text) for chat, text in burst]
        return await asyncio.gather(*calls, return_exceptions=True)


async def with_aiogram(base, token, burst):
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    session = AiohttpSession(
        api=TelegramAPIServer(
            base=f"{base}/bot{{token}}/{{method}}",
            file="https://api.telegram.org/file/bot{token}/{path}",
        )
    )
    bot = Bot(token=token, session=session)
    try:
        calls = [bot.send_message(chat_id=chat, text=text) for chat, text in burst]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await session.close()


def main():
    library, base, token, count, chats, first_chat = sys.argv[1:7]
    burst = list(texts(library, int(count), int(chats), int(first_chat)))
    run = {"ptb": with_ptb, "aiogram": with_aiogram}[library]
    results = asyncio.run(run(base, token, burst))
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    ids = {r.message_id for r in results if not isinstance(r, BaseException)}
    print(json.dumps({"library": library, "sent": len(burst), "errors": errors[:20],
                      "error_count": len(errors), "message_ids": len(ids)}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
