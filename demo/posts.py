"""The project's own repost stream: forum posts, their reposts, and the truth about each one.

``generate(n, seed)`` makes a deterministic stream (stdlib ``random`` only, no external text) of
forum-style posts in arrival order, with one truth record per post:

- ``original``: a new post, composed from hand-written pieces (opener, main sentence, detail, closer) of
  one of twelve topics, its slots filled from small vocabularies;
- ``exact``: a byte-identical copy of an earlier member of a cluster;
- ``edit``: a spam-style edit of an earlier member: typos, casing, emoji, links added or changed,
  Cyrillic/Greek homoglyphs, zero-width characters, dropped words, punctuation and whitespace noise;
- ``rewrite``: the original said in other words (every piece has hand-written paraphrases that carry the
  same slots);
- ``near_miss``: the original's pieces with one material fact changed (a price, place, product, day,
  amount, or a negation): *not* a duplicate;
- ``cross_tenant``: a copy, exact or edited, of a post of the other tenant: *not* a duplicate, because
  tenants never match each other.

A cluster is an original with its exact copies, edits and rewrites, all in the original's tenant;
``duplicate_of`` names the cluster's original (null for every other kind). A post made from another one
always arrives after it, and ``created_at`` strictly increases along the stream, one second at least, so
it can serve as the Kafka record timestamp.

Known limit: originals are composed from a finite set of pieces, so in large streams (10,000 posts) some
originals of one topic share pieces and differ only in their facts; the truth counts them as unrelated,
as it does near misses. Generation keeps the main sentences of originals at least two facts apart while
the vocabularies allow it, and never repeats an original's text.

``precision_recall(decisions, truth)`` scores a run's flags against the truth. Regenerate with
``python -m demo.posts --n N --seed S --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

Kind = Literal["original", "exact", "edit", "rewrite", "near_miss", "cross_tenant"]
KINDS: Final[tuple[Kind, ...]] = ("original", "exact", "edit", "rewrite", "near_miss", "cross_tenant")
DUPLICATE_KINDS: Final[frozenset[str]] = frozenset({"exact", "edit", "rewrite"})
"""Kinds a detector should flag: each names an earlier member of its cluster."""

DEFAULT_TENANT: Final = "default"
OTHER_TENANT: Final = "acme"
DEFAULT_N: Final = 500
DEFAULT_SEED: Final = 4
MIN_N: Final = 20
SHARES: Final[Mapping[Kind, float]] = {
    "exact": 0.07,
    "edit": 0.20,
    "rewrite": 0.09,
    "near_miss": 0.08,
    "cross_tenant": 0.04,
}
"""Share of each derived kind in a stream; originals make up the rest (52 %)."""
OTHER_TENANT_SHARE: Final = 0.15
START: Final = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)
MEAN_GAP_S: Final = 150.0
"""Mean time between posts; reposts follow their source after about a tenth of the stream's span."""

POSTS_FILE: Final = "posts.jsonl"
TRUTH_FILE: Final = "truth.jsonl"


class PostRecord(TypedDict):
    """One line of ``posts.jsonl``: a document as the worker reads it."""

    id: str
    text: str
    tenant: str
    created_at: str


class TruthRecord(TypedDict):
    """One line of ``truth.jsonl``: what the post really is."""

    id: str
    duplicate_of: str | None
    kind: Kind


@dataclass(frozen=True)
class Stream:
    """Posts and their truth, both in arrival order, one truth record per post."""

    posts: list[PostRecord]
    truth: list[TruthRecord]


# ---------------------------------------------------------------------------------------------- text
# Each topic has four sections: opener (optional), main sentence, detail (optional), closer (optional).
# A piece is written as "form | form [| form]": the same meaning in other words, with the same slots.

OPENER, MAIN, DETAIL, CLOSER = 0, 1, 2, 3
_INCLUDE: Final = (0.55, 1.0, 0.85, 0.6)
"""Chance that an original includes each section."""

_TOPICS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "tech_support": (
        (
            "Hi all, first time posting here. | Hello everyone, new member here.",
            "Hoping someone can help me out. | Really hoping somebody here knows the answer.",
            "Long-time lurker, finally asking a question. "
            "| I have read this board for years and now I need help.",
            "Sorry if this is the wrong section. | Apologies if I posted this in the wrong place.",
        ),
        (
            "My {laptop} shows error {error_code} every time I open {app} on {os}. "
            "| Whenever I launch {app} on {os}, my {laptop} throws error {error_code}.",
            "Since the update to {version} my {laptop} running {os} {boot_state}. "
            "| My {laptop} on {os} {boot_state} ever since I updated to {version}.",
            "Whenever I print from {app} on {os}, the {printer} only prints blank pages. "
            "| The {printer} spits out nothing but blank pages whenever I print from {app} on {os}.",
            "My {phone} battery drains from full to empty in about {hours} hours since updating {app}. "
            "| Ever since the {app} update, my {phone} goes from a full "
            "battery to zero in roughly {hours} hours.",
            "I cannot get an external monitor to work with my {laptop} over {port} on {os}. "
            "| A screen plugged into my {laptop} through {port} is never detected on {os}.",
            "{app} version {version} crashes on my {phone} as soon as I try to upload a photo. "
            "| As soon as I try to upload a picture, {app} {version} closes itself on my {phone}.",
        ),
        (
            "I already tried a full reset and a different cable. "
            "| A factory reset and a new cable did not change anything.",
            "It started after the update to version {version}. "
            "| The problem began right after I updated to version {version}.",
            "The machine is about {years} years old and otherwise runs fine. "
            "| Apart from this it runs well, and it is around {years} years old.",
            "The logs show nothing useful and safe mode behaves the same. "
            "| Safe mode has the same problem and the logs say nothing helpful.",
            "Support told me to wait for a patch, which is not really an answer. "
            "| The official helpline just said to wait for a fix, which does not help much.",
        ),
        (
            "Any ideas would be appreciated. | Thanks in advance for any suggestions.",
            "Thanks for reading this far. | Appreciate you taking the time to read.",
            "I will post the fix here if I find one. | If I solve it I will update this thread.",
            "Cheers. | Thanks, all.",
        ),
    ),
    "marketplace": (
        (
            "Clearing out the spare room. | Decluttering before a move.",
            "Selling for a friend who is moving abroad. "
            "| Posting this on behalf of a friend who is leaving the country.",
            "Price drop! | Reduced price!",
            "First come, first served. | Whoever turns up first gets it.",
        ),
        (
            "Selling my {item}, {condition}, for {price}. "
            "| My {item} is up for sale at {price}, {condition}.",
            "For sale in {city}: my {item}, asking {price}. "
            "| I am asking {price} for my {item}, located in {city}.",
            "{item} available for {price}, pickup only in {city}. "
            "| Pickup only, in {city}: {item} for {price}.",
            "Looking to swap my {item} for any decent {item2}, around {city}. "
            "| Would trade my {item} for a decent {item2}, I am in {city}.",
            "The {item} comes {extras_state}, {price} firm. "
            "| {price}, not negotiable, and the {item} comes {extras_state}.",
            "Brand new {item}, never used, {price} or best offer. "
            "| {item}, still unused, {price} or your best offer.",
        ),
        (
            "Pickup near {city} station, or I can post it for a small fee. "
            "| Collection near {city} station, or postage for a little extra.",
            "Cash on collection only. | I only take cash when you collect.",
            "Smoke-free and pet-free home. | It comes from a home with no pets and no smokers.",
            "Happy to show it working before you pay. "
            "| You can see it working before handing over any money.",
            "Message me for more photos. | Send me a message if you want more pictures.",
        ),
        (
            "No time wasters please. | Serious buyers only, please.",
            "Will not hold it without a deposit. | I cannot reserve it unless you pay a deposit.",
            "Thanks for looking. | Thanks for having a look.",
            "Bump, still available. | Still for sale, bumping this.",
        ),
    ),
    "recipes": (
        (
            "Made this for dinner tonight and had to share. | Cooked this tonight and wanted to pass it on.",
            "My grandmother's version, slightly updated. | This is my gran's recipe with a few tweaks.",
            "Cheap weeknight meal. | A budget-friendly dinner for busy evenings.",
            "Recipe request answered, as promised. | As promised in the other thread, here is the recipe.",
        ),
        (
            "{dish} in {minutes} minutes: brown the {ingredient}, add the sauce and simmer. "
            "| Brown the {ingredient}, pour in the sauce and let it "
            "simmer: {dish} ready in {minutes} minutes.",
            "For {servings} people you need {amount} of {ingredient} for this {dish}. "
            "| This {dish} takes {amount} of {ingredient} and feeds {servings}.",
            "The trick to a good {dish} is to {trick}. | If you want a proper {dish}, {trick}.",
            "This {dish} for {servings} is {diet_state}. "
            "| Heads up: this {dish}, which serves {servings}, is {diet_state}.",
            "Bake the {dish} at {temp} degrees for {minutes} minutes. "
            "| {minutes} minutes at {temp} degrees is all the {dish} needs in the oven.",
            "You can freeze the {dish} in {servings} portions for up to {weeks} weeks. "
            "| Split into {servings} portions, the {dish} keeps in the freezer for as long as {weeks} weeks.",
        ),
        (
            "Use tofu instead of meat for a vegetarian version. | For a meat-free version, swap in tofu.",
            "A squeeze of lemon at the end makes a big difference. "
            "| Finish it with lemon juice; it really lifts it.",
            "Leftovers taste even better the next day. | It is even nicer reheated the following day.",
            "Serve it with rice or crusty bread. | Crusty bread or plain rice on the side works well.",
            "Do not skip the resting time. | Whatever you do, let it rest before serving.",
        ),
        (
            "Enjoy! | Hope you like it!",
            "Let me know how it turns out. | Tell me how yours comes out.",
            "Photos in the comments. | I put pictures in the replies.",
            "Happy cooking. | Have fun in the kitchen.",
        ),
    ),
    "gaming": (
        (
            "LFG post. | Looking for group.",
            "Anyone still playing? | Is anyone here still active in this one?",
            "Quick question for the veterans. | Question for experienced players.",
            "Patch day thoughts. | Some thoughts now that the patch is out.",
        ),
        (
            "Looking for two more players for {game} on {platform}, usually online at {time}. "
            "| Need two extra people for {game} on {platform}; I play most nights around {time}.",
            "Just hit {rank} in {game} after {playtime} hours of grinding. "
            "| After {playtime} hours of grinding I finally reached {rank} in {game}.",
            "Is {game} worth {game_price} on {platform}? "
            "| Would you pay {game_price} for {game} on {platform}?",
            "The new patch for {game} {patch_state} the matchmaking problems on {platform}. "
            "| On {platform}, the latest {game} patch {patch_state} the broken matchmaking.",
            "Our clan in {game} is recruiting, {rank} or above, {platform} only. "
            "| {platform} only: recruiting for our {game} clan, minimum rank {rank}.",
            "Trading my rare {game} skin for {gems} gems, {platform} only. "
            "| For {gems} gems I will trade my rare {game} skin ({platform} only).",
        ),
        (
            "Mic required, no toxicity. | You need a mic, and please be friendly.",
            "We mostly play ranked but casual is fine too. "
            "| Ranked mostly, though we are happy to play casual.",
            "Servers have been lagging all week. | The servers lagged the whole week.",
            "I play on the EU servers. | My region is Europe.",
            "Add me in game and mention this post. | Send me an invite in game and say you saw this post.",
        ),
        (
            "GG. | Good games, everyone.",
            "See you in the lobby. | Catch you in the lobby.",
            "Drop your tag below. | Leave your username in the replies.",
            "Thanks. | Cheers, all.",
        ),
    ),
    "local_news": (
        (
            "Heads up, neighbours. | Quick notice for everyone living nearby.",
            "Saw this on the council noticeboard. | This was posted on the town noticeboard.",
            "Just got back from the meeting. | Back from the residents' meeting.",
            "Sharing for anyone who missed it. | Passing this on in case you missed it.",
        ),
        (
            "{street} will be closed to traffic on {day} from {time} for resurfacing. "
            "| Resurfacing work closes {street} to cars on {day} starting at {time}.",
            "The library on {street} {open_state} on {day}. | On {day}, the {street} library {open_state}.",
            "The farmers market moves to {venue} from {day} onward, opening at {time}. "
            "| Starting {day}, the farmers market will be held at {venue} and open at {time}.",
            "Bin collection in {district} moves to {day} for the next {weeks} weeks. "
            "| For the next {weeks} weeks, {district} bins will be collected on {day} instead.",
            "A water main burst on {street} in {district}, expect low pressure until {time}. "
            "| Low water pressure in {district} until {time} because of a burst main on {street}.",
            "The council approved {homes} new homes next to {venue}, building from {month}. "
            "| Plans for {homes} new homes beside {venue} were approved, with work starting in {month}.",
        ),
        (
            "Buses will be diverted along the ring road. | The bus routes will go around via the ring road.",
            "Parking will be suspended for the day. | You will not be able to park there all day.",
            "The notice says work could overrun if it rains. "
            "| According to the notice, rain may delay the work.",
            "There is a public consultation online until the end of the month. "
            "| You can comment online until the month ends.",
            "Residents were not told in advance, which annoyed a lot of people. "
            "| Plenty of people were annoyed that residents got no warning.",
        ),
        (
            "Please share with anyone affected. | Pass this on to anyone it affects.",
            "Stay safe out there. | Take care, everyone.",
            "More details as I hear them. | Will update when I know more.",
            "Thanks to the volunteer who spotted this. | Credit to the volunteer who noticed this.",
        ),
    ),
    "crypto_spam": (
        (
            "Attention everyone! | Listen up, everyone!",
            "This is not financial advice, but... | Not financial advice, however...",
            "I was skeptical at first. | I did not believe it either at first.",
            "Limited spots left! | Only a few places remain!",
        ),
        (
            "{coin} is about to go {multiplier}, get in before the listing on {day}. "
            "| Buy {coin} before it lists on {day}; it is set to go {multiplier}.",
            "I turned {amount_small} into {amount_big} in one week trading {coin} with this bot. "
            "| This bot traded {coin} for me and grew {amount_small} to {amount_big} in a single week.",
            "Free {coin} airdrop worth {amount_small} for the first {wallets} wallets, claim at {link}. "
            "| The first {wallets} wallets get a free {coin} airdrop "
            "worth {amount_small}; claim it at {link}.",
            "Join our signal group and earn {percent} per day on {coin}; the next call is on {day}. "
            "| Our signals group makes {percent} a day trading {coin}, next call {day}, join now.",
            "Double your {coin} in {hours} hours: send at least "
            "{amount_small} to our wallet and get twice back. "
            "| Send {amount_small} or more in {coin} to our wallet and receive double within {hours} hours.",
            "Guaranteed {percent} daily returns on {coin} staking, minimum deposit {amount_small}. "
            "| {coin} staking with a guaranteed {percent} per day, from a {amount_small} deposit.",
        ),
        (
            "Details at {link}. | More info: {link}.",
            "DM me for the invite code. | Send me a direct message for the invite.",
            "Thousands of members are already making money. | Thousands of people are already earning.",
            "Only available for the next {hours} hours. | This offer ends in {hours} hours.",
            "No experience needed. | You do not need any experience.",
        ),
        (
            "Do not miss out! | Don't miss this!",
            "Thank me later. | You can thank me later.",
            "Act fast. | Be quick.",
            "To the moon! | Moon soon!",
        ),
    ),
    "job_spam": (
        (
            "HIRING NOW. | We are hiring right now.",
            "Work from home opportunity. | A chance to work from home.",
            "Tired of your 9 to 5? | Sick of your day job?",
            "Students and parents welcome. | Great for students and stay-at-home parents.",
        ),
        (
            "Earn {amount_week} a week from home, only {hours_day} hours a day, {people} spots left. "
            "| Only {people} spots left: make {amount_week} weekly "
            "working from home {hours_day} hours per day.",
            "We need {people} people to review products online, paid {amount_task} per review, from {day}. "
            "| Starting {day}, {people} online product reviewers needed, {amount_task} for each review.",
            "Data entry job, {amount_hour} per hour, {hours_day} hours a day, fully remote, start {day}. "
            "| Start on {day}: fully remote data entry at {amount_hour} an hour for {hours_day} hours a day.",
            "Package reshipping assistant wanted in {city}, {hours_day} hours a day, {amount_week} weekly. "
            "| Wanted in {city}: assistant to reship parcels "
            "{hours_day} hours a day, {amount_week} every week.",
            "Like {people} videos a day and get paid {amount_task} for each one, paid out every {day}. "
            "| Earn {amount_task} per video by liking {people} videos every day, with payouts each {day}.",
            "Registration {fee_state} for the first {people} "
            "applicants, who earn {amount_week} from week one. "
            "| The first {people} applicants earn {amount_week} in week one; registration {fee_state}.",
        ),
        (
            "Apply at {link}. | Sign up here: {link}.",
            "Contact our recruiter on WhatsApp. | Message our hiring manager on WhatsApp.",
            "Payment weekly by bank transfer. | Paid every week straight into your bank account.",
            "Only a phone or laptop needed. | All you need is a phone or a laptop.",
            "Spots are filling up fast. | Places are going quickly.",
        ),
        (
            "Serious applicants only. | Only serious people, please.",
            "Message me now. | Send me a message today.",
            "Limited positions. | Positions are limited.",
            "Do not wait. | Don't wait around.",
        ),
    ),
    "housing": (
        (
            "Room available. | Room to let.",
            "Posting for my landlord. | My landlord asked me to post this.",
            "Moving out, so passing this on. | I am moving out and want to pass this on.",
            "Still looking, any leads welcome. | Still searching, happy to hear about anything.",
        ),
        (
            "{rooms}-bedroom flat in {district}, {rent} per month, available from {month}. "
            "| Available from {month}: {rooms}-bedroom flat in {district} for {rent} a month.",
            "Looking for a flatmate in {district} from {month}, the "
            "room is {rent} per month including bills. "
            "| Flatmate wanted in {district} from {month}, {rent} a month for the room, bills included.",
            "The {rent} flat in {district} is {pets_state}. "
            "| Note that the {district} flat at {rent} is {pets_state}.",
            "Studio near {venue}, {rent} per month, minimum stay of {months_min} months. "
            "| {rent} monthly for a studio close to {venue}, {months_min} months minimum.",
            "Couple looking for a {rooms}-bedroom place in {district}, budget up to {rent}. "
            "| We are a couple searching for {rooms} bedrooms in {district}, our limit is {rent}.",
            "Sublet in {district} from {month} for {months_min} months, {rent} per month. "
            "| {months_min}-month sublet in {district} starting {month} at {rent} monthly.",
        ),
        (
            "The deposit is one month's rent. | A deposit equal to one month is required.",
            "Ten minutes' walk from the train station. | It is a ten-minute walk to the station.",
            "Washing machine and fast internet included. | Comes with a washing machine and quick broadband.",
            "Viewings on weekday evenings. | You can view it on weekday evenings.",
            "References from a previous landlord needed. "
            "| You will need a reference from your last landlord.",
        ),
        (
            "Message me to arrange a viewing. | Get in touch to book a viewing.",
            "No agencies please. | Agencies, please do not contact me.",
            "Thanks! | Thank you!",
            "Please share. | Feel free to share.",
        ),
    ),
    "lost_pets": (
        (
            "Please help! | Urgent, please help!",
            "Posting in every group I can. | Sharing this everywhere I can.",
            "Found this little one this morning. | Came across this one this morning.",
            "Fingers crossed someone has seen something. | Hoping somebody saw something.",
        ),
        (
            "Our {colour} {pet} called {pet_name} went missing near {place} on {day}. "
            "| {pet_name}, our {colour} {pet}, disappeared close to {place} on {day}.",
            "Found a {colour} {pet} wandering by {place}, it is {collar_state}. "
            "| There was a {colour} {pet} wandering near {place}; it is {collar_state}.",
            "Lost: {colour} {pet} answering to {pet_name}, last seen on {street}. "
            "| Last seen on {street}: our {colour} {pet}, who answers to {pet_name}.",
            "{pet_name} the {pet} is {chip_state}. | Our {pet} {pet_name} is {chip_state}.",
            "Reward of {reward} for the safe return of {pet_name} the {pet}. "
            "| {reward} reward if {pet_name}, our {pet}, comes home safely.",
            "A {colour} {pet} has been sitting outside {place} since {day}. "
            "| Since {day}, a {colour} {pet} has been hanging around outside {place}.",
        ),
        (
            "Very shy, please do not chase. | Please do not chase, very timid.",
            "Check your sheds and garages please. | Please look in your garages and sheds.",
            "Photo in the comments. | Picture in the replies.",
            "Already reported to the local vets. | The vets nearby have been told.",
            "Our kids are heartbroken. | The children are really upset.",
        ),
        (
            "Please share. | Shares appreciated.",
            "Thank you so much. | Thanks so much, everyone.",
            "Call or message any time. | Ring or text whenever.",
            "Any sighting helps. | Every sighting helps.",
        ),
    ),
    "meetups": (
        (
            "Open invitation! | Everyone is welcome!",
            "New here and starting something. | I am new and starting a little group.",
            "Reminder for this week. | Friendly reminder about this week.",
            "Back by popular demand. | Returning because people asked.",
        ),
        (
            "Book club meets at {venue} on {day} at {time}; this month we are reading {book}. "
            "| This month's book is {book}: the club meets {day} at {time} at {venue}.",
            "Beginner running group leaves {venue} every {day} at {time} for a loop of {distance}. "
            "| Every {day} at {time}, our beginners' run of {distance} starts from {venue}.",
            "Board game night at {venue} on {day} from {time}, entry is {entry_state}. "
            "| {day} is board game night at {venue}, starting {time}, and entry is {entry_state}.",
            "Community clean-up of {place} this {day} from {time}, gloves provided. "
            "| Gloves provided: we clean up {place} this {day} starting {time}.",
            "Language exchange, {language} and English, at {venue} on {day} evenings. "
            "| {day} evenings at {venue}: {language}-English language exchange.",
            "Open mic at {venue} this {day}, sign-up from {time}. "
            "| Sign-up opens at {time} for the open mic at {venue} on {day}.",
        ),
        (
            "All ages and abilities welcome. | Everyone is welcome whatever their age or level.",
            "Bring a friend. | Feel free to bring someone along.",
            "Parking is limited, so come by bike if you can. "
            "| There is not much parking, so cycle if possible.",
            "Refreshments provided. | There will be drinks and snacks.",
            "We usually finish around two hours later. | It normally wraps up after about two hours.",
        ),
        (
            "Hope to see you there. | Hope you can make it.",
            "Reply if you are coming. | Let me know if you will come.",
            "All welcome. | Everybody welcome.",
            "Spread the word. | Tell your friends.",
        ),
    ),
    "home_repair": (
        (
            "DIY question. | Question for the DIY crowd.",
            "Bit out of my depth here. | I am a bit out of my depth.",
            "Before I call someone out... | Before I pay for a callout...",
            "Renting, so I want to keep it cheap. | I rent, so I would like a cheap fix.",
        ),
        (
            "My {brand} {appliance} {symptom} and shows code {code}. "
            "| The {brand} {appliance} I have {symptom} with code {code} on the display.",
            "Is it safe to replace the {part} on a {brand} {appliance} myself? "
            "| Can I swap the {part} on my {brand} {appliance} without a professional?",
            "There is a damp patch on the {room} ceiling, about {size} across, growing for {weeks} weeks. "
            "| For {weeks} weeks a damp patch roughly {size} wide has been growing on the {room} ceiling.",
            "Our {years}-year-old {brand} {appliance} {warranty_state}, so do I repair or replace? "
            "| Repair or replace? The {appliance} from {brand} is {years} years old and {warranty_state}.",
            "Which drill bit do I need for the {wall_type} walls in the {room} to hang a {size} shelf? "
            "| To hang a {size} shelf on the {wall_type} wall of my {room}, what drill bit should I use?",
            "The radiator in the {room} stays cold even after bleeding it, "
            "and the {brand} boiler is {years} years old. "
            "| Even after bleeding, the {room} radiator will not warm "
            "up; our {brand} boiler is {years} years old.",
        ),
        (
            "Photos attached. | Pictures are attached.",
            "I have basic tools and a multimeter. | I own a multimeter and the usual tools.",
            "The house was built in the seventies. | It is a house from the 1970s.",
            "A plumber quoted a lot more than I expected. "
            "| The quote from a plumber was far higher than I thought.",
            "I turned off the power at the fuse box first. "
            "| First I switched off the electricity at the fuse box.",
        ),
        (
            "Thanks in advance. | Thank you in advance.",
            "Any advice welcome. | All advice welcome.",
            "Cheers. | Cheers, folks.",
            "I would rather not make it worse. | I do not want to make things worse.",
        ),
    ),
    "travel": (
        (
            "Travel question. | Question about travel.",
            "First time going abroad alone. | My first solo trip abroad.",
            "Planning ahead for once. | For once I am planning early.",
            "Back from a great trip. | Just got back from a brilliant trip.",
        ),
        (
            "Is {destination} worth visiting in {month}, or is it too {weather}? "
            "| Would {destination} be too {weather} in {month} to enjoy?",
            "Do I need a visa for {destination} if I stay {days} days in {month}? "
            "| Staying {days} days in {destination} in {month}: is a visa required?",
            "Flights to {destination} in {month} are {fare}, is that a good price? "
            "| Is {fare} a decent price for a flight to {destination} in {month}?",
            "The night train from {city} to {destination} {train_state}. "
            "| Heads up: the {city} to {destination} night train {train_state}.",
            "Spent {days} days in {destination} for under {fare}, here is how. "
            "| Here is how I did {days} days in {destination} on less than {fare}.",
            "Which area of {destination} is best for {days} days with kids in {month}? "
            "| In {month}, with children, where should we stay for {days} days in {destination}?",
        ),
        (
            "We prefer trains over flying where possible. "
            "| Where we can, we take the train instead of flying.",
            "Budget is fairly tight. | We do not have a big budget.",
            "We do not drive. | None of us drives.",
            "Happy to share my itinerary. | I can share the full itinerary.",
            "Travel insurance is sorted already. | I have already sorted insurance.",
        ),
        (
            "Thanks for any tips. | Grateful for any tips.",
            "Safe travels. | Travel safe, everyone.",
            "Cheers! | Thanks, all!",
            "Will report back. | I will post an update afterwards.",
        ),
    ),
}

_SPAM_TOPICS: Final = frozenset({"crypto_spam", "job_spam"})
"""Reposted twice as often as other topics, as spam is."""

_VOCAB: Final[dict[str, tuple[str, ...]]] = {
    # tech support
    "laptop": ("ThinkPad T480", "Dell XPS 13", "MacBook Air", "HP Envy x360", "Surface Pro 7",
               "Acer Aspire 5", "ZenBook 14", "IdeaPad 3", "Framework 13", "Chromebook Duet"),
    "phone": ("Pixel 7", "iPhone 12", "Galaxy S21", "Moto G84", "OnePlus 9", "Nokia G22", "Fairphone 4",
              "Xperia 10", "Redmi Note 12", "Galaxy A54"),
    "os": ("Windows 11", "Windows 10", "Ubuntu 24.04", "Fedora 40", "macOS Sonoma", "Linux Mint 21",
           "Debian 12"),
    "app": ("Firefox", "Thunderbird", "Steam", "Zoom", "LibreOffice", "Spotify", "VLC", "Outlook", "WhatsApp",
            "Signal"),
    "error_code": ("0x80070005", "0xc000021a", "E-204", "ERR_CONNECTION_RESET", "0x8024a105", "code 43"),
    "boot_state": ("only boots into safe mode", "will not boot, not even into safe mode"),
    "printer": ("Brother laser printer", "Canon inkjet", "HP OfficeJet", "Epson EcoTank", "Kyocera laser",
                "Xerox B210", "Canon Pixma"),
    "hours": ("4", "6", "9", "12", "24", "48", "72"),
    "port": ("HDMI", "USB-C", "DisplayPort", "a Thunderbolt dock", "a VGA adapter"),
    "version": ("2.3", "4.1.2", "11.0", "23H2", "5.15"),
    "years": ("two", "three", "four", "six", "nine", "twelve", "fifteen"),
    # marketplace
    "item": ("road bike", "standing desk", "games console", "espresso machine", "baby stroller",
             "electric guitar", "washing machine", "dining table", "mountain bike", "air fryer",
             "gaming monitor", "sewing machine", "kayak", "drum kit", "office chair", "mini fridge",
             "camera lens", "e-scooter"),
    "item2": ("tent", "turntable", "tablet", "bread maker", "projector", "rowing machine", "telescope",
              "lawn mower", "dehumidifier", "keyboard"),
    "price": ("$40", "$75", "$120", "$180", "$250", "$340", "$450", "$600", "$850"),
    "city": ("Leeds", "Porto", "Lyon", "Denver", "Austin", "Tampere", "Graz", "Utrecht", "Cork", "Bristol",
             "Malmö", "Bologna", "Halifax", "Adelaide", "Kraków", "Ghent"),
    "condition": ("like new", "well used but working", "with a cracked panel", "for parts only"),
    "extras_state": ("with the original receipt and box", "without the receipt or box"),
    # recipes
    "dish": ("chickpea curry", "lasagne", "banana bread", "shakshuka", "beef stew", "lemon drizzle cake",
             "mushroom risotto", "chili con carne", "apple crumble", "focaccia", "fish pie", "tomato soup",
             "carrot cake", "dal", "paella", "gnocchi bake", "vegetable pie", "ramen", "pancakes",
             "moussaka"),
    "ingredient": ("chicken thighs", "chickpeas", "minced beef", "mushrooms", "lentils", "prawns",
                   "sweet potatoes", "halloumi"),
    "minutes": ("20", "25", "35", "45", "60", "90"),
    "servings": ("two", "three", "four", "six", "eight", "ten"),
    "amount": ("300 g", "500 g", "1 kg", "two cans", "a whole bag"),
    "trick": ("toast the spices first", "rest the dough overnight", "use cold butter",
              "add a splash of vinegar at the end", "cook it low and slow", "salt it the night before",
              "use day-old rice", "brown everything in batches"),
    "diet_state": ("completely gluten-free", "not gluten-free"),
    "temp": ("160", "180", "200", "220"),
    "weeks": ("two", "three", "four", "six", "eight", "twelve"),
    # gaming (invented titles)
    "game": ("Starfall Arena", "Iron Tactics", "Deep Orbit", "Rune Harbor", "Neon Drift", "Kingdom of Ash",
             "Pixel Raiders", "Frostline", "Velocity League", "Hollow Crown", "Ember Saga", "Tidebreak",
             "Quarry Kings", "Skyward Legion"),
    "platform": ("PC", "PS5", "Xbox", "Switch", "Steam Deck", "mobile"),
    "game_price": ("$20", "$30", "$40", "$60", "$70"),
    "rank": ("Silver", "Gold", "Platinum", "Diamond", "Master"),
    "time": ("7 pm", "9 pm", "10:30 pm", "6:30 am", "noon", "8 am", "5 pm"),
    "playtime": ("40", "120", "300", "650", "1,200"),
    "patch_state": ("finally fixed", "did not fix"),
    "gems": ("500", "2,000", "5,000", "10,000"),
    # local news, meetups, housing
    "street": ("Mill Lane", "Station Road", "Harbour Street", "Queen's Avenue", "Elm Grove", "Church Street",
               "Bridge Road", "Victoria Terrace", "Canal Walk", "Orchard Way", "Hawthorn Close",
               "Market Square", "Fenwick Road", "Albion Street"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "open_state": ("will be open as usual", "will stay closed"),
    "venue": ("the old bus depot", "St Anne's car park", "the leisure centre", "Riverside Park",
              "the community hall", "the retail park", "the town museum", "the sports ground",
              "the old cinema"),
    "district": ("Northfield", "Eastbrook", "Westhaven", "Southgate", "Highcliffe", "Oakley", "Millbrook",
                 "Ashford Vale", "Kingsmead", "Redhill"),
    "homes": ("40", "80", "120", "250", "400", "600", "1,100", "2,000"),
    "rooms": ("one", "two", "three", "four"),
    "rent": ("$550", "$650", "$800", "$900", "$1,200", "$1,550", "$2,000", "$2,600"),
    "month": ("January", "March", "April", "June", "August", "September", "November"),
    "pets_state": ("fine with pets", "strictly no pets"),
    "months_min": ("three", "six", "twelve"),
    "book": ("The Lantern Keeper of Vell", "Nine Quiet Rivers", "Glass Orchards", "The Cartographer's Dog",
             "Under the Copper Hill", "Small Hours in Merrow"),
    "distance": ("3 km", "5 km", "8 km", "10 km"),
    "entry_state": ("free", "$5 per person"),
    "language": ("Spanish", "German", "Portuguese", "Japanese", "Polish", "Italian"),
    # spam
    "coin": ("MOONX", "SafeDoge", "QBIT", "ZentaCoin", "HyperLink Token", "LUNARA", "PEPEGOLD", "OrbitChain",
             "VoltSwap", "NOVA9", "Kryptide", "GIGAPAW"),
    "multiplier": ("10x", "50x", "100x", "1000x"),
    "amount_small": ("$50", "$100", "$200", "$500", "$1,000", "$2,500"),
    "amount_big": ("$4,000", "$8,000", "$15,000", "$25,000", "$60,000", "$120,000"),
    "wallets": ("100", "250", "500", "1,000", "5,000", "10,000"),
    "percent": ("1%", "2%", "3%", "5%", "8%", "12%", "20%"),
    "link": ("https://claim-airdrop.example/start", "https://moonx-bonus.example/join",
             "https://quick-earn.example/apply", "https://signal-vip.example/invite",
             "https://remote-jobs-now.example/register", "https://easy-income.example/signup"),
    "amount_week": ("$600", "$800", "$1,200", "$1,500", "$1,900", "$2,400", "$3,000", "$4,500"),
    "hours_day": ("one", "two", "three", "four", "five"),
    "people": ("5", "10", "15", "25", "40", "50", "100"),
    "amount_task": ("$5", "$8", "$12", "$15", "$20", "$25", "$40"),
    "amount_hour": ("$15", "$18", "$22", "$25", "$30", "$35", "$45"),
    "fee_state": ("is completely free", "costs a one-time fee of $49"),
    # lost pets
    "pet": ("cat", "dog", "rabbit", "parrot", "tortoise", "ferret"),
    "colour": ("black", "ginger", "grey", "white", "brown"),
    "pet_name": ("Biscuit", "Luna", "Pepper", "Milo", "Ziggy", "Nala", "Otis", "Maple", "Bruno", "Clementine",
                 "Mochi", "Rufus", "Hazel", "Pickle"),
    "place": ("the petrol station", "Riverside Park", "the primary school", "the allotments",
              "the train station", "the big roundabout"),
    "collar_state": ("wearing a red collar", "not wearing a collar"),
    "chip_state": ("microchipped", "not microchipped"),
    "reward": ("$50", "$100", "$150", "$250", "$400", "$500", "$1,000"),
    # home repair (invented brands)
    "brand": ("Nordhaus", "Kelvar", "Brightline", "Vantor", "Hestia", "Ferro", "Polaris Home"),
    "appliance": ("washing machine", "dishwasher", "boiler", "tumble dryer", "fridge freezer", "oven"),
    "symptom": ("will not drain", "leaks from the door", "makes a grinding noise", "trips the electrics",
                "keeps beeping"),
    "code": ("E21", "F05", "H20", "E3", "LO", "F28"),
    "part": ("door seal", "heating element", "drain pump", "thermostat", "fan motor"),
    "room": ("bathroom", "kitchen", "bedroom", "hallway", "living room", "loft", "utility room"),
    "size": ("20 cm", "30 cm", "45 cm", "60 cm", "1 metre", "1.5 metres"),
    "wall_type": ("brick", "plasterboard", "concrete", "stone", "timber", "breeze block"),
    "warranty_state": ("is still under warranty", "is out of warranty"),
    # travel
    "destination": ("Lisbon", "Kyoto", "Reykjavik", "Marrakesh", "Ljubljana", "Oaxaca", "Tbilisi", "Hanoi",
                    "Tallinn", "Cape Town", "Valparaíso", "Bergen", "Naples", "Penang"),
    "weather": ("hot", "rainy", "crowded", "cold"),
    "days": ("5", "10", "14", "30", "60", "90"),
    "fare": ("$180", "$320", "$540", "$900"),
    "train_state": ("runs again this summer", "does not run this summer"),
}
_NOT_MATERIAL: Final = frozenset({"link"})
"""Slots whose value is not a fact of the post: a spammer swapping links is still reposting."""


@dataclass(frozen=True)
class _Piece:
    forms: tuple[str, ...]  # the same meaning in other words
    slots: tuple[str, ...]  # in order of first appearance; every form has the same set


def _slots_of(form: str) -> tuple[str, ...]:
    names = [name for _, name, _, _ in string.Formatter().parse(form) if name]
    return tuple(dict.fromkeys(names))


def _parse_piece(topic: str, spec: str) -> _Piece:
    forms = tuple(form.strip() for form in spec.split(" | "))
    slots = _slots_of(forms[0])
    if len(forms) < 2 or any(set(_slots_of(form)) != set(slots) for form in forms):
        raise ValueError(f"{topic}: a piece needs two or more forms with the same slots: {spec!r}")
    if unknown := [name for name in slots if name not in _VOCAB]:
        raise ValueError(f"{topic}: unknown slots {unknown} in {spec!r}")
    return _Piece(forms, slots)


def _parse_topics() -> dict[str, tuple[tuple[_Piece, ...], ...]]:
    parsed: dict[str, tuple[tuple[_Piece, ...], ...]] = {}
    for topic, sections in _TOPICS.items():
        parsed[topic] = tuple(tuple(_parse_piece(topic, spec) for spec in section) for section in sections)
        for piece in parsed[topic][MAIN]:
            if len(_material(piece.slots)) < 2:
                raise ValueError(f"{topic}: a main sentence needs two material slots: {piece.forms[0]!r}")
    return parsed


def _material(slots: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in slots if name not in _NOT_MATERIAL)


_TEMPLATES: Final = _parse_topics()
_TOPIC_NAMES: Final = tuple(_TEMPLATES)


@dataclass(frozen=True)
class _Draft:
    """How a post is composed: per section (piece, form) or None when left out; slot values."""

    topic: str
    choice: tuple[tuple[int, int] | None, ...]
    slots: tuple[tuple[str, str], ...]  # sorted (name, value) pairs

    def pieces(self) -> list[_Piece]:
        return [
            section[chosen[0]]
            for section, chosen in zip(_TEMPLATES[self.topic], self.choice, strict=True)
            if chosen is not None
        ]

    def main(self) -> _Piece:
        chosen = self.choice[MAIN]
        assert chosen is not None  # every draft has a main sentence
        return _TEMPLATES[self.topic][MAIN][chosen[0]]

    def facts(self) -> dict[str, str]:
        """The main sentence's material slots and their values."""
        values = dict(self.slots)
        return {name: values[name] for name in _material(self.main().slots)}

    def render(self) -> str:
        values = dict(self.slots)
        sentences = []
        for section, chosen in zip(_TEMPLATES[self.topic], self.choice, strict=True):
            if chosen is not None:
                text = section[chosen[0]].forms[chosen[1]].format_map(values)
                sentences.append(text[:1].upper() + text[1:])
        return " ".join(sentences)


# --------------------------------------------------------------------------------------------- edits
# Spam-style edits, applied in this order. None touches a digit, so no edit changes a price or a number.

_NEGATIONS: Final = frozenset({"not", "no", "never", "without", "nothing", "none", "nor", "cannot"})
_HOMOGLYPHS: Final[dict[str, str]] = {  # Latin letter → Cyrillic and Greek look-alikes
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "j": "\u0458", "o": "\u043e\u03bf",
    "p": "\u0440\u03c1", "s": "\u0455", "v": "\u03bd", "x": "\u0445", "y": "\u0443",
    "A": "\u0410\u0391", "B": "\u0412\u0392", "C": "\u0421", "E": "\u0415\u0395", "H": "\u041d\u0397",
    "I": "\u0406\u0399", "K": "\u041a\u039a", "M": "\u041c\u039c", "N": "\u039d", "O": "\u041e\u039f",
    "P": "\u0420\u03a1", "T": "\u0422\u03a4", "X": "\u0425\u03a7", "Y": "\u03a5", "Z": "\u0396",
}
_ZERO_WIDTH: Final = "\u200b\u200c\u200d\u2060\ufeff"
_EMOJI: Final = ("🔥", "💯", "✅", "👉", "😂", "🙏", "💰", "🚀", "⭐", "❤️", "👍", "😍")
_LINK_HOSTS: Final = (  # reserved names (RFC 2606): no real site
    "example.com", "example.net", "example.org", "deals.example", "promo.test", "go.example",
)
_LINK_LEADS: Final = ("", "More here: ", "👉 ", "Link: ", "check ")
_URL: Final = re.compile(r"https?://\S+")
_WORD: Final = re.compile(r"[A-Za-z]{4,}")
_KEYBOARD: Final = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _new_link(rng: random.Random) -> str:
    code = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"https://{rng.choice(_LINK_HOSTS)}/{code}"


def _drop_words(rng: random.Random, text: str) -> str:
    tokens = text.split(" ")

    def droppable(token: str) -> bool:
        word = token.strip(".,!?:;()").lower()
        return word.isalpha() and word not in _NEGATIONS

    candidates = [i for i, token in enumerate(tokens) if droppable(token)]
    if len(tokens) < 6 or not candidates:
        return text
    dropped = set(rng.sample(candidates, min(len(candidates), rng.randint(1, 2))))
    return " ".join(token for i, token in enumerate(tokens) if i not in dropped)


def _misspell(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    how = rng.randrange(4)
    if how == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if how == 1:
        return word[:i] + word[i] + word[i:]
    if how == 2:
        row = next((row for row in _KEYBOARD if word[i].lower() in row), None)
        if row is not None:
            j = row.index(word[i].lower())
            near = row[j - 1] if j > 0 and (j == len(row) - 1 or rng.random() < 0.5) else row[j + 1]
            return word[:i] + (near.upper() if word[i].isupper() else near) + word[i + 1:]
    return word[:i] + word[i + 1:]


def _typos(rng: random.Random, text: str) -> str:
    words = list(_WORD.finditer(text))
    if not words:
        return text
    picked = sorted(rng.sample(words, min(len(words), rng.randint(1, 2))), key=lambda m: -m.start())
    for match in picked:
        text = text[: match.start()] + _misspell(rng, match.group()) + text[match.end():]
    return text


def _casing(rng: random.Random, text: str) -> str:
    how = rng.randrange(3)
    if how == 0:
        return text.upper()
    if how == 1:
        return text.lower()
    tokens = text.split(" ")
    shouted = {rng.randrange(len(tokens))} | {i for i in range(len(tokens)) if rng.random() < 0.3}
    return " ".join(token.upper() if i in shouted else token for i, token in enumerate(tokens))


def _link(rng: random.Random, text: str) -> str:
    if _URL.search(text) and rng.random() < 0.8:
        return _URL.sub(lambda _: _new_link(rng), text, count=1)
    return f"{text} {rng.choice(_LINK_LEADS)}{_new_link(rng)}"


def _emoji(rng: random.Random, text: str) -> str:
    added = "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3)))
    where = rng.random()
    if where < 0.5:
        return f"{text} {added}"
    if where < 0.7:
        return f"{added} {text}"
    tokens = text.split(" ")
    tokens.insert(rng.randrange(1, len(tokens) + 1), added)
    return " ".join(tokens)


def _noise(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 2)):
        how = rng.randrange(6)
        if how == 0 and " " in text:
            spaces = [i for i, ch in enumerate(text) if ch == " "]
            i = rng.choice(spaces)
            text = text[:i] + " " * rng.randint(2, 4) + text[i + 1:]
        elif how == 1:
            text = text.rstrip(".!?") + rng.choice(("!!!", "!!", "...", "?!"))
        elif how == 2:
            text = text.replace(",", "")
        elif how == 3:
            text = text.replace(". ", ".\n", rng.randint(1, 3))
        elif how == 4:
            text = text.replace(",", " ,").replace(". ", " . ")
        else:
            text = f"  {text}\t "
    return text


def _homoglyphs(rng: random.Random, text: str) -> str:
    positions = [i for i, ch in enumerate(text) if ch in _HOMOGLYPHS]
    chars = list(text)
    for i in rng.sample(positions, min(len(positions), rng.randint(1, 4))):
        chars[i] = rng.choice(_HOMOGLYPHS[chars[i]])
    return "".join(chars)


def _zero_width(rng: random.Random, text: str) -> str:
    inside = [i for i in range(1, len(text)) if text[i - 1].isalpha() and text[i].isalpha()]
    for i in sorted(rng.sample(inside, min(len(inside), rng.randint(1, 4))), reverse=True):
        text = text[:i] + rng.choice(_ZERO_WIDTH) + text[i:]
    return text


_EDITS: Final[tuple[tuple[Callable[[random.Random, str], str], int], ...]] = (
    (_drop_words, 2),
    (_typos, 3),
    (_casing, 2),
    (_link, 2),
    (_emoji, 2),
    (_noise, 2),
    (_homoglyphs, 2),
    (_zero_width, 2),
)
"""Each edit with its weight, in the order they are applied."""


def spam_edit(rng: random.Random, text: str) -> str:
    """One to three spam-style edits of ``text``; never returns ``text`` unchanged."""
    for _ in range(10):
        pool = list(range(len(_EDITS)))
        chosen: list[int] = []
        for _ in range(rng.choices((1, 2, 3), weights=(5, 3, 2))[0]):
            pick = rng.choices(pool, weights=[_EDITS[i][1] for i in pool])[0]
            pool.remove(pick)
            chosen.append(pick)
        edited = text
        for i, (edit, _) in enumerate(_EDITS):
            if i in chosen:
                edited = edit(rng, edited)
        if edited != text:
            return edited
    return f"{text} {rng.choice(_EMOJI)}"


# ------------------------------------------------------------------------------------------ the stream


@dataclass
class _Post:
    gen: int  # creation order; a post made from another one is created after it
    t: float  # seconds after START
    text: str
    tenant: str
    kind: Kind
    root: int | None  # gen of the cluster's original; None for posts that duplicate nothing
    draft: _Draft | None = None


_ATTEMPTS: Final = 40
_ORIGINAL_ATTEMPTS: Final = 24
"""Drafts tried for a new original before settling for the one least like the others."""


class _Builder:
    """Creates posts in generation order; ``build`` sorts them into arrival order."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.span_s = n * MEAN_GAP_S
        self.posts: list[_Post] = []
        self.members: dict[int, list[int]] = {}  # cluster root → gens of its members, root first
        self.seen: set[str] = set()  # case-folded texts of originals and near misses
        # Main-sentence facts of originals and near misses, keyed by (topic, main piece): whole, and with
        # each one left out in turn, so that "differs in fewer than two facts" is a few set look-ups.
        self.facts: set[tuple[str, int, tuple[str, ...]]] = set()
        self.facts_but_one: set[tuple[str, int, int, tuple[str, ...]]] = set()
        self.roots: list[int] = []  # originals, spam twice: picked uniformly
        self.reposted: list[int] = []  # one entry per repost: picked, it favours popular clusters
        self.copied: set[int] = set()  # clusters already copied to the other tenant

    def _add(self, post: _Post) -> _Post:
        self.posts.append(post)
        if post.kind == "original":
            self.members[post.gen] = [post.gen]
        elif post.root is not None:
            self.members[post.root].append(post.gen)
            self.reposted.append(post.root)
        return post

    def _after(self, gen: int) -> float:
        return self.posts[gen].t + self.rng.expovariate(10.0 / self.span_s)

    def _distance(self, draft: _Draft) -> int:
        """In how many main-sentence facts (0, 1, or 2 meaning "two or more") ``draft`` differs from the
        closest original or near miss with the same main sentence."""
        facts, main = tuple(draft.facts().values()), _main_index(draft)
        if (draft.topic, main, facts) in self.facts:
            return 0
        for i in range(len(facts)):
            if (draft.topic, main, i, facts[:i] + facts[i + 1:]) in self.facts_but_one:
                return 1
        return 2

    def _remember(self, draft: _Draft, text: str) -> None:
        self.seen.add(text.casefold())
        facts, main = tuple(draft.facts().values()), _main_index(draft)
        self.facts.add((draft.topic, main, facts))
        self.facts_but_one.update(
            (draft.topic, main, i, facts[:i] + facts[i + 1:]) for i in range(len(facts))
        )

    def _compose(self, topic: str) -> _Draft:
        choice: list[tuple[int, int] | None] = []
        for index, section in enumerate(_TEMPLATES[topic]):
            if self.rng.random() < _INCLUDE[index]:
                piece = self.rng.randrange(len(section))
                choice.append((piece, self.rng.randrange(len(section[piece].forms))))
            else:
                choice.append(None)
        draft = _Draft(topic, tuple(choice), ())
        names = dict.fromkeys(name for piece in draft.pieces() for name in piece.slots)
        return replace(draft, slots=tuple(sorted((name, self.rng.choice(_VOCAB[name])) for name in names)))

    def original(self, tenant: str) -> None:
        """A new post whose main sentence differs in two facts (one at the least) from every earlier
        original or near miss with the same main sentence. A crowded topic gives way to another one."""
        topic = self.rng.choice(_TOPIC_NAMES)
        best: tuple[int, _Draft, str] | None = None
        for attempt in range(_ORIGINAL_ATTEMPTS):
            if attempt >= _ORIGINAL_ATTEMPTS // 2 and (best is None or best[0] == 0):
                topic = self.rng.choice(_TOPIC_NAMES)
            draft = self._compose(topic)
            text = draft.render()
            if text.casefold() in self.seen:
                continue
            distance = self._distance(draft)
            if best is None or distance > best[0]:
                best = (distance, draft, text)
            if distance >= 2:
                break
        if best is None or best[0] == 0:
            raise RuntimeError(f"no new post in {_ORIGINAL_ATTEMPTS} attempts: vocabularies exhausted")
        _, draft, text = best
        gen = len(self.posts)
        self._add(_Post(gen, self.rng.uniform(0, self.span_s), text, tenant, "original", gen, draft))
        self._remember(draft, text)
        self.roots += [gen] * (2 if draft.topic in _SPAM_TOPICS else 1)

    def _cluster(self) -> int:
        if self.reposted and self.rng.random() < 0.4:
            return self.rng.choice(self.reposted)
        return self.rng.choice(self.roots)

    def derived(self, kind: Kind) -> bool:
        """Add one post of ``kind``; False when no source fits (the caller makes an original instead)."""
        for _ in range(_ATTEMPTS):
            root = self._cluster()
            if kind == "cross_tenant" and root in self.copied:
                continue
            post = self._make(kind, root)
            if post is not None:
                self._add(post)
                if kind == "cross_tenant":
                    self.copied.add(root)
                return True
        return False

    def _make(self, kind: Kind, root: int) -> _Post | None:
        gen, rng, source = len(self.posts), self.rng, self.posts[root]
        member = self.posts[rng.choice(self.members[root])]
        if kind == "exact":
            return _Post(gen, self._after(member.gen), member.text, member.tenant, kind, root)
        if kind == "edit":
            return _Post(gen, self._after(member.gen), spam_edit(rng, member.text), member.tenant, kind, root)
        if kind == "cross_tenant":
            text = member.text if rng.random() < 0.6 else spam_edit(rng, member.text)
            tenant = OTHER_TENANT if member.tenant == DEFAULT_TENANT else DEFAULT_TENANT
            return _Post(gen, self._after(member.gen), text, tenant, kind, None)
        assert source.draft is not None  # originals keep their draft
        if kind == "rewrite":
            draft = self._rewrite(source.draft)
            texts = {self.posts[m].text.casefold() for m in self.members[root]}
            if draft.render().casefold() in texts:
                return None
            return _Post(gen, self._after(root), draft.render(), source.tenant, kind, root, draft)
        near = self._near_miss(source.draft)
        if near is None or near.render().casefold() in self.seen or self._distance(near) < 1:
            return None
        self._remember(near, near.render())
        return _Post(gen, self._after(root), near.render(), source.tenant, "near_miss", None, near)

    def _rewrite(self, draft: _Draft) -> _Draft:
        """Every piece in another of its forms; the optional opener and closer sometimes left out."""
        choice: list[tuple[int, int] | None] = []
        for index, (section, chosen) in enumerate(zip(_TEMPLATES[draft.topic], draft.choice, strict=True)):
            if chosen is None or (index in (OPENER, CLOSER) and self.rng.random() < 0.3):
                choice.append(None)
                continue
            piece, form = chosen
            others = [f for f in range(len(section[piece].forms)) if f != form]
            choice.append((piece, self.rng.choice(others)))
        return replace(draft, choice=tuple(choice))

    def _near_miss(self, draft: _Draft) -> _Draft | None:
        """The same pieces and forms with one fact of the main sentence changed."""
        name = self.rng.choice(list(draft.facts()))
        values = dict(draft.slots)
        options = [value for value in _VOCAB[name] if value != values[name]]
        if not options:
            return None
        values[name] = self.rng.choice(options)
        return replace(draft, slots=tuple(sorted(values.items())))

    def build(self) -> Stream:
        ordered = sorted(self.posts, key=lambda p: (p.t, p.gen))
        width = max(5, len(str(len(ordered))))
        ids = {post.gen: f"p{i:0{width}d}" for i, post in enumerate(ordered, start=1)}
        posts: list[PostRecord] = []
        truth: list[TruthRecord] = []
        last = -1
        for post in ordered:
            second = max(int(post.t), last + 1)
            last = second
            created = (START + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")
            doc_id = ids[post.gen]
            duplicate_of = ids[post.root] if post.root is not None and post.kind != "original" else None
            posts.append(PostRecord(id=doc_id, text=post.text, tenant=post.tenant, created_at=created))
            truth.append(TruthRecord(id=doc_id, duplicate_of=duplicate_of, kind=post.kind))
        return Stream(posts, truth)


def _main_index(draft: _Draft) -> int:
    chosen = draft.choice[MAIN]
    return -1 if chosen is None else chosen[0]


def composition(n: int) -> dict[Kind, int]:
    """How many posts of each kind a stream of ``n`` posts has (every kind at least once)."""
    if n < MIN_N:
        raise ValueError(f"a stream needs at least {MIN_N} posts, got {n}")
    derived = {kind: max(1, round(n * share)) for kind, share in SHARES.items()}
    return {"original": n - sum(derived.values()), **derived}


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Stream:
    """A stream of ``n`` posts in arrival order and its truth; the same ``(n, seed)`` gives the same bytes."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible test data, not cryptography
    counts = composition(n)
    builder = _Builder(rng, n)
    for _ in range(counts["original"]):
        builder.original(OTHER_TENANT if rng.random() < OTHER_TENANT_SHARE else DEFAULT_TENANT)
    kinds: list[Kind] = [kind for kind in KINDS[1:] for _ in range(counts[kind])]
    rng.shuffle(kinds)
    for kind in kinds:
        if not builder.derived(kind):
            builder.original(DEFAULT_TENANT)
    return builder.build()


# -------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class KindScore:
    """Posts of one kind: how many, how many were flagged, how many of those flags were right."""

    total: int
    flagged: int
    correct: int


@dataclass(frozen=True)
class Score:
    """Flags against the truth. Empty denominators count as perfect: no flag is no wrong flag."""

    flags: int  # documents flagged (after collapsing repeated decisions by id)
    correct: int  # flags naming an earlier member of the document's own cluster
    duplicates: int  # documents that should be flagged (exact, edit, rewrite)
    by_kind: dict[str, KindScore]

    @property
    def precision(self) -> float:
        return self.correct / self.flags if self.flags else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.duplicates if self.duplicates else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def describe(self) -> str:
        """A few lines for a terminal: the totals, then flagged/total per kind."""
        lines = [
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  f1 {self.f1:.3f}  "
            f"({self.correct} correct of {self.flags} flags; {self.duplicates} reposts to find)"
        ]
        for kind, counts in self.by_kind.items():
            if counts.total:
                should = "flag" if kind in DUPLICATE_KINDS else "leave"
                lines.append(
                    f"  {kind:<13} {counts.flagged:>5} of {counts.total:<5} flagged "
                    f"({counts.correct} correctly; should {should})"
                )
        return "\n".join(lines)


def precision_recall(decisions: Iterable[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]]) -> Score:
    """Score decisions (or flags) against the truth, which must be in arrival order.

    A decision is a mapping with ``id`` and ``duplicate_of`` (null: not flagged); a ``flagged: false`` key
    also means not flagged, so both the worker's flags and ``scan``'s decisions can be passed. Several
    decisions for one id (an at-least-once replay) collapse to the last one, as a compacted topic would.
    A flag is correct when the document is an exact copy, edit or rewrite and ``duplicate_of`` is the
    cluster's original or any member of the cluster that arrived before the document.
    """
    position: dict[str, int] = {}
    cluster: dict[str, str] = {}
    kind: dict[str, str] = {}
    for i, row in enumerate(truth):
        doc_id = str(row["id"])
        position[doc_id], kind[doc_id] = i, str(row["kind"])
        cluster[doc_id] = str(row["duplicate_of"] or doc_id)
    latest: dict[str, str | None] = {}
    for decision in decisions:
        doc_id = str(decision["id"])
        if doc_id not in position:
            raise ValueError(f"a decision names document {doc_id!r}, which is not in the truth")
        target = decision.get("duplicate_of")
        latest[doc_id] = None if target is None or decision.get("flagged") is False else str(target)
    flags = {doc_id: target for doc_id, target in latest.items() if target is not None}

    def right(doc_id: str, target: str) -> bool:
        return (
            kind[doc_id] in DUPLICATE_KINDS
            and target in position
            and cluster[target] == cluster[doc_id]
            and position[target] < position[doc_id]
        )

    correct = {doc_id for doc_id, target in flags.items() if right(doc_id, target)}
    by_kind: dict[str, KindScore] = {
        k: KindScore(
            total=sum(v == k for v in kind.values()),
            flagged=sum(kind[d] == k for d in flags),
            correct=sum(kind[d] == k for d in correct),
        )
        for k in KINDS
    }
    duplicates = sum(v in DUPLICATE_KINDS for v in kind.values())
    return Score(flags=len(flags), correct=len(correct), duplicates=duplicates, by_kind=by_kind)


# ------------------------------------------------------------------------------------------------ I/O


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, UTF-8, characters as they are (homoglyphs, emoji, zero-widths)."""
    lines = [json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of a JSONL file, parsed."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_stream(stream: Stream, out_dir: Path) -> tuple[Path, Path]:
    """Write ``posts.jsonl`` and ``truth.jsonl`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    posts, truth = out_dir / POSTS_FILE, out_dir / TRUTH_FILE
    write_jsonl(posts, stream.posts)
    write_jsonl(truth, stream.truth)
    return posts, truth


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.posts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"posts in the stream (default {DEFAULT_N})")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent, help="output directory (default: demo/)"
    )
    args = parser.parse_args(argv)
    try:
        stream = generate(args.n, args.seed)
    except ValueError as error:
        parser.error(str(error))
    posts, truth = write_stream(stream, args.out)
    counts = Counter(row["kind"] for row in stream.truth)
    tenants = Counter(row["tenant"] for row in stream.posts)
    print(f"wrote {len(stream.posts)} posts to {posts} and their truth to {truth}")
    print("kinds: " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS))
    print("tenants: " + ", ".join(f"{tenant} {count}" for tenant, count in sorted(tenants.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
