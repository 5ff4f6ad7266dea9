"""The steps of /train between the command and the queue: fetching the attachments, the photo
report, the consent button, and the upload thread for photos beyond the command's ten.

Nothing is stored until the member presses the consent button: until then the photos' verdicts
(and their normalised PNGs) live only in the view in memory, and a timeout or a restart drops
them.

Photos beyond ten go to a private thread the bot opens. A bot sees the attachments of a
member's message only with the Message Content intent, or when the message mentions it, so the
thread asks for a mention unless the bot runs with that intent; the photos are read from the
thread's history when the member presses **Start training**, and the thread is deleted once
the training is queued (or when it times out), so the photos do not stay on Discord.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.utils import escape_markdown

from bot.errors import AccessDenied, InvalidArgument
from bot.frontends.discord.render import actor_of, send_error
from bot.frontends.discord.training_messages import post_progress
from bot.photos import PhotoInput, PhotoRules, SetReport, Verdict, declared_refusal
from bot.service import CONSENT_TEXT
from bot.service.training import TrainRequest

if TYPE_CHECKING:
    from bot.frontends.discord.client import DreamBot

__all__ = [
    "CONSENT_LABEL",
    "CONSENT_TIMEOUT_S",
    "UPLOAD_TIMEOUT_S",
    "ConsentView",
    "Draft",
    "UploadView",
    "fetch_photos",
    "report_embed",
    "show_report",
]

log = logging.getLogger(__name__)

# The consent button's own words (a button label holds at most 80 characters).
CONSENT_LABEL = "These photos are of me, or I have the permission of the person in them"
# The consent message is ephemeral: it can be edited only while its interaction token lives
# (15 minutes), so it times out before that.
CONSENT_TIMEOUT_S = 10 * 60
UPLOAD_TIMEOUT_S = 30 * 60
_ICONS = {Verdict.OK: "✅", Verdict.WARN: "⚠️", Verdict.REJECT: "❌"}
_COLOURS = {
    Verdict.OK: discord.Colour.green(),
    Verdict.WARN: discord.Colour.gold(),
    Verdict.REJECT: discord.Colour.red(),
}
_SET_HEADINGS = {
    Verdict.OK: "Ready to train",
    Verdict.WARN: "Ready to train (see the notes above)",
    Verdict.REJECT: "Can't train",
}


@dataclass(frozen=True, slots=True)
class Draft:
    """A /train between the photo check and the consent: what was asked, the verdicts so far,
    who asked, and the channel the command ran in (the job's channel, even from the thread)."""

    request: TrainRequest
    report: SetReport
    owner_id: int
    channel_id: int


def _bot(interaction: discord.Interaction) -> DreamBot:
    return cast("DreamBot", interaction.client)


async def fetch_photos(
    attachments: Sequence[discord.Attachment], rules: PhotoRules
) -> list[PhotoInput]:
    """Each attachment as a photo to check. One declared too large, or declared as something
    other than an image, is not downloaded at all; the others are, and are judged by their
    real bytes (a file longer than the limit is refused by the check)."""
    photos = []
    for attachment in attachments:
        declared = PhotoInput(
            b"", attachment.filename, attachment.content_type, declared_size=attachment.size
        )
        if declared_refusal(declared, rules) is not None:
            photos.append(declared)
            continue
        try:
            data = await attachment.read()
        except (discord.HTTPException, discord.RateLimited) as exc:
            log.info("attachment %s could not be downloaded: %s", attachment.id, exc)
            photos.append(replace(declared, read_error="the download from Discord failed"))
            continue
        photos.append(replace(declared, data=data))
    return photos


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def report_embed(report: SetReport) -> discord.Embed:
    """Every photo's verdict with its reason in plain words, and the set's verdict."""
    usable = len(report.accepted)
    embed = discord.Embed(
        title=f"Photo check: {usable} of {len(report.photos)} usable",
        colour=_COLOURS[report.verdict],
    )
    per_line = max(80, 3800 // max(1, len(report.photos)))  # 25 photos fit one description
    embed.description = "\n".join(
        _clip(
            f"{_ICONS[p.verdict]} **{p.index + 1}.** {escape_markdown(p.name)}: {p.message}",
            per_line,
        )
        for p in report.photos
    )
    embed.add_field(
        name=_SET_HEADINGS[report.verdict], value=_clip(report.message, 1024), inline=False
    )
    return embed


def _consent_prompt() -> str:
    return (
        f"**One last check before training.** {CONSENT_TEXT}\n"
        "Press the button to confirm it and start; nothing is stored or charged until you do."
    )


async def show_report(interaction: discord.Interaction, draft: Draft, *, can_add: bool) -> None:
    """Reply with the photo report: with the consent button when the set can train, else with
    why not (and nothing stored or charged)."""
    embed = report_embed(draft.report)
    if not draft.report.can_train:
        await interaction.followup.send(
            "These photos can't be trained on, so nothing was stored or charged. Replace the "
            "photos marked ❌ and run `/train` again.",
            embed=embed,
            ephemeral=True,
        )
        return
    view = ConsentView(draft, interaction, can_add=can_add)
    await interaction.followup.send(_consent_prompt(), embed=embed, view=view, ephemeral=True)


class _View(discord.ui.View):
    """A view whose errors reach the member like a command's (the one error renderer)."""

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await send_error(interaction, error)


class ConsentView(_View):
    """The consent button (which starts the training), and "Add more photos" while there is
    room for more than the command took."""

    def __init__(
        self,
        draft: Draft,
        origin: discord.Interaction,
        *,
        can_add: bool,
        upload: UploadView | None = None,
    ) -> None:
        super().__init__(timeout=CONSENT_TIMEOUT_S)
        self.draft = draft
        self.origin = origin
        self.upload = upload
        self.busy = False
        if not can_add:
            self.remove_item(self.add_more)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if self.busy:  # a second press while the first one is starting the training
            await interaction.response.send_message("Already on it…", ephemeral=True)
            return False
        return True

    @discord.ui.button(label=CONSENT_LABEL, style=discord.ButtonStyle.success)
    async def consent(
        self, interaction: discord.Interaction, button: discord.ui.Button[ConsentView]
    ) -> None:
        self.busy = True
        try:
            await interaction.response.defer()
            bot = _bot(interaction)
            # The job belongs to the channel /train ran in, even when confirmed in the thread.
            actor = replace(actor_of(interaction), channel_id=self.draft.channel_id)
            queued = await bot.service.training.start(
                actor, self.draft.request, self.draft.report, consent=True
            )
        finally:
            self.busy = False
        self.stop()
        try:
            message = await post_progress(bot, queued.job, queued.status)
            where = f" Follow it here: {message.jump_url}"
        except (discord.HTTPException, discord.RateLimited):
            log.warning("could not post the progress of job %s", queued.job.id, exc_info=True)
            where = " I couldn't post its progress in the channel; `/queue` shows where it is."
        await interaction.edit_original_response(
            content=(
                f"✅ Training **{escape_markdown(queued.name)}** is queued with "
                f"{queued.photos} photos (job `{queued.job.id}`).{where}"
            ),
            embed=None,
            view=None,
        )
        if self.upload is not None:
            await self.upload.close()

    @discord.ui.button(label="Add more photos", style=discord.ButtonStyle.secondary)
    async def add_more(
        self, interaction: discord.Interaction, button: discord.ui.Button[ConsentView]
    ) -> None:
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            raise InvalidArgument("More photos can be added only from a server's text channel.")
        await interaction.response.defer()
        bot = _bot(interaction)
        room = bot.settings.photos_max - len(self.draft.report.photos)
        try:
            thread = await channel.create_thread(
                name=_clip(f"Photos for {self.draft.request.default_name}", 100),
                type=discord.ChannelType.private_thread,
                invitable=False,
                auto_archive_duration=60,
            )
            await thread.add_user(interaction.user)
        except discord.Forbidden:
            raise AccessDenied(
                "I'm not allowed to open a private thread here, so I can't take more photos. "
                "Ask a server admin to let me create private threads, or train on up to 10."
            ) from None
        upload = UploadView(self.draft, room, thread)
        await thread.send(
            upload.instructions(bot, interaction.user),
            view=upload,
            allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
        )
        self.stop()
        await interaction.edit_original_response(
            content=(
                f"Drop up to {room} more photos in {thread.mention}, then press **Start "
                "training** there. I'll check them together with these."
            ),
            view=None,
        )

    @discord.ui.button(label="Discard", style=discord.ButtonStyle.secondary)
    async def discard(
        self, interaction: discord.Interaction, button: discord.ui.Button[ConsentView]
    ) -> None:
        self.stop()
        await interaction.response.edit_message(
            content="Discarded: nothing was stored or charged.", embed=None, view=None
        )
        if self.upload is not None:
            await self.upload.close()

    async def on_timeout(self) -> None:
        try:
            await self.origin.edit_original_response(
                content="This request timed out: nothing was stored or charged. Run `/train` "
                "again when you're ready.",
                embed=None,
                view=None,
            )
        except (discord.HTTPException, discord.RateLimited):
            log.debug("could not mark an expired /train as timed out", exc_info=True)


class UploadView(_View):
    """The **Start training** button in the upload thread: reads the member's photos there,
    checks them with the first ones, and asks for consent."""

    def __init__(self, draft: Draft, room: int, thread: discord.Thread) -> None:
        super().__init__(timeout=UPLOAD_TIMEOUT_S)
        self.draft = draft
        self.room = room
        self.thread = thread

    def instructions(self, bot: DreamBot, member: discord.abc.User) -> str:
        return f"{member.mention} {self._how(bot)}"

    def _how(self, bot: DreamBot) -> str:
        see = (
            ""
            if bot.intents.message_content or bot.user is None
            else f" **Mention me ({bot.user.mention}) in each message with photos**, or I "
            "can't see them."
        )
        return (
            f"Drop up to **{self.room}** more photos of your subject here (several per message "
            f"is fine).{see} Then press **Start training**. Only you and the server's "
            "moderators can see this thread, and I delete it once your training starts."
        )

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.draft.owner_id:
            await interaction.response.send_message(
                f"Only <@{self.draft.owner_id}> can start this training.",
                ephemeral=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )
            return False
        return True

    @discord.ui.button(label="Start training", style=discord.ButtonStyle.success)
    async def start(
        self, interaction: discord.Interaction, button: discord.ui.Button[UploadView]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = _bot(interaction)
        attachments = [
            attachment
            async for message in self.thread.history(limit=200, oldest_first=True)
            if message.author.id == self.draft.owner_id
            for attachment in message.attachments
        ]
        if not attachments:
            raise InvalidArgument(
                f"I can't see any photos from you in this thread yet. {self._how(bot)}"
            )
        if len(attachments) > self.room:
            raise InvalidArgument(
                f"You added {len(attachments)} photos here; only {self.room} more fit "
                f"({bot.settings.photos_max} in all). Delete some and press Start training again."
            )
        training = bot.service.training
        photos = await fetch_photos(attachments, training.rules(self.draft.request))
        report = await training.add(self.draft.request, self.draft.report, photos)
        embed = report_embed(report)
        if not report.can_train:
            await interaction.followup.send(
                "These photos can't be trained on yet, so nothing was stored or charged. Add "
                "or replace photos here and press **Start training** again.",
                embed=embed,
                ephemeral=True,
            )
            return
        draft = replace(self.draft, report=report)
        view = ConsentView(draft, interaction, can_add=False, upload=self)
        await interaction.followup.send(_consent_prompt(), embed=embed, view=view, ephemeral=True)

    async def close(self) -> None:
        """Delete the thread (the photos in it go with it), or lock it when not allowed to."""
        self.stop()
        try:
            await self.thread.delete()
        except discord.Forbidden:
            await self.thread.edit(archived=True, locked=True)
        except discord.NotFound:
            pass

    async def on_timeout(self) -> None:
        try:
            await self.thread.send("This upload timed out: nothing was stored. Run `/train` again.")
            await self.close()
        except (discord.HTTPException, discord.RateLimited):
            log.info("could not close the expired upload thread %s", self.thread.id, exc_info=True)
