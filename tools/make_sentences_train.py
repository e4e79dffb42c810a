"""Regenerate ``sentences_train.txt``: distillation and calibration text for the nlp case.

Templates with slot vocabularies, sampled with a fixed seed, because no English corpus ships
with the packages this project may install and the model must never see the evaluation set
(``sentences.txt``). Every domain of the evaluation set has templates here (everyday errands,
news, science, code, health, travel, questions, instructions, reviews) so the distilled student
meets similar vocabulary and sentence lengths, but no line is copied from it. Run:
``python tools/make_sentences_train.py`` (deterministic; rewrites the file).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

SEED = 20240611
COUNT = 1600

SLOTS: dict[str, list[str]] = {
    "name": [
        "Anna",
        "Omar",
        "Mei",
        "Lukas",
        "Priya",
        "Diego",
        "Fatima",
        "Tom",
        "Ingrid",
        "Kwame",
        "Sofia",
        "Hiroshi",
        "Elena",
        "Marcus",
        "Aisha",
        "Pierre",
        "Nadia",
        "Sam",
        "Olga",
        "Rafael",
        "my sister",
        "our neighbour",
        "the new intern",
        "my uncle",
        "the coach",
    ],
    "place": [
        "the library",
        "the station",
        "the market",
        "the hospital",
        "the beach",
        "the office",
        "the park",
        "the airport",
        "the gym",
        "the town hall",
        "the bakery",
        "the museum",
        "the harbour",
        "the garage",
        "the post office",
        "the school",
    ],
    "city": [
        "Lisbon",
        "Nairobi",
        "Osaka",
        "Toronto",
        "Krakow",
        "Lima",
        "Melbourne",
        "Seoul",
        "Cairo",
        "Dublin",
        "Mumbai",
        "Oslo",
        "Austin",
        "Marseille",
        "Hanoi",
        "Bogotá",
    ],
    "day": [
        "on Monday",
        "on Tuesday",
        "tomorrow",
        "next week",
        "this evening",
        "on Friday",
        "after lunch",
        "at the weekend",
        "in the morning",
        "before noon",
        "tonight",
    ],
    "food": [
        "lentil soup",
        "grilled fish",
        "banana bread",
        "vegetable curry",
        "pancakes",
        "mushroom risotto",
        "apple pie",
        "fried rice",
        "tomato salad",
        "roast chicken",
        "chocolate cake",
        "bean stew",
        "pumpkin soup",
        "dumplings",
        "flatbread",
    ],
    "object": [
        "keys",
        "wallet",
        "laptop charger",
        "glasses",
        "phone",
        "scarf",
        "notebook",
        "headphones",
        "bike lock",
        "passport",
        "water bottle",
        "jacket",
    ],
    "vehicle": ["bus", "train", "taxi", "ferry", "tram", "plane", "metro"],
    "company": [
        "the software firm",
        "a regional bank",
        "the mining group",
        "the retailer",
        "a logistics company",
        "the energy supplier",
        "the telecom operator",
        "a food producer",
        "the chipmaker",
        "the insurer",
        "a shipping line",
    ],
    "econ": [
        "profits",
        "revenue",
        "exports",
        "house prices",
        "wages",
        "rents",
        "energy costs",
        "factory output",
        "tourism spending",
        "the trade deficit",
    ],
    "direction": [
        "rose",
        "fell",
        "jumped",
        "slipped",
        "recovered",
        "stalled",
        "surged",
        "declined",
    ],
    "pct": ["two", "three", "five", "seven", "ten", "twelve", "eighteen", "twenty"],
    "official": [
        "The health minister",
        "The governor",
        "The city council",
        "The senator",
        "The finance minister",
        "The union leader",
        "The foreign secretary",
        "The police chief",
        "The education minister",
    ],
    "policy": [
        "a ban on single-use plastics",
        "higher taxes on tobacco",
        "free school meals",
        "a cap on rent increases",
        "longer parental leave",
        "stricter emission limits",
        "cheaper public transport",
        "a new housing programme",
        "a minimum wage rise",
    ],
    "disaster": [
        "A storm",
        "A flood",
        "A landslide",
        "A wildfire",
        "A heatwave",
        "A blizzard",
        "A drought",
        "A tornado",
    ],
    "region": [
        "the north of the country",
        "the coastal towns",
        "the southern valleys",
        "several islands",
        "the capital",
        "farming areas",
        "mountain villages",
    ],
    "sport": [
        "football",
        "tennis",
        "rugby",
        "swimming",
        "cycling",
        "volleyball",
        "hockey",
        "athletics",
        "rowing",
        "climbing",
        "badminton",
    ],
    "team": [
        "The visitors",
        "The champions",
        "The underdogs",
        "The national team",
        "The home side",
        "The youth squad",
        "The women's team",
    ],
    "tech": [
        "the login service",
        "the payment API",
        "the search index",
        "the mobile app",
        "the nightly backup",
        "the message queue",
        "the web server",
        "the build pipeline",
        "the recommendation model",
        "the billing job",
        "the cache cluster",
    ],
    "bug": [
        "times out under load",
        "returns an empty list",
        "crashes on startup",
        "leaks file handles",
        "logs the wrong user",
        "double-charges some customers",
        "ignores the retry setting",
        "uses too much memory",
        "rejects valid tokens",
    ],
    "fix": [
        "added a retry with backoff",
        "upgraded the driver",
        "increased the pool size",
        "added a missing index",
        "rolled back the last release",
        "fixed the off-by-one error",
        "pinned the dependency version",
        "moved the work to a background task",
    ],
    "lang": ["Python", "Rust", "Go", "JavaScript", "Java", "C++", "SQL", "Kotlin", "Bash"],
    "concept": [
        "recursion",
        "closures",
        "type inference",
        "garbage collection",
        "concurrency",
        "hash tables",
        "binary search",
        "regular expressions",
        "dependency injection",
        "memory alignment",
        "vector databases",
        "gradient descent",
    ],
    "science": [
        "The experiment showed",
        "A new study found",
        "Researchers reported",
        "The survey suggests",
        "Early trials indicate",
        "The team confirmed",
    ],
    "finding": [
        "that sleep improves learning in older adults",
        "that bees can recognise human faces",
        "that the comet contains organic molecules",
        "that city parks lower night-time temperatures",
        "that the drug reduces migraine attacks",
        "that some bacteria can digest plastic",
        "that whales sing in regional dialects",
        "that the lake has warmed by two degrees",
        "that children learn words faster through play",
        "that the ancient road was older than thought",
    ],
    "symptom": [
        "a sore throat",
        "a headache",
        "back pain",
        "a rash",
        "a runny nose",
        "stomach cramps",
        "dizziness",
        "a high temperature",
        "a twisted ankle",
    ],
    "advice": [
        "rest and drink fluids",
        "see a doctor if it lasts more than a week",
        "apply ice for twenty minutes",
        "avoid screens before bed",
        "take a short walk every hour",
        "cut down on sugar",
        "keep the wound clean",
    ],
    "animal": [
        "fox",
        "heron",
        "badger",
        "owl",
        "deer",
        "seal",
        "squirrel",
        "turtle",
        "crow",
        "frog",
        "lynx",
        "goose",
    ],
    "genre": [
        "thriller",
        "documentary",
        "comedy",
        "historical novel",
        "science fiction film",
        "memoir",
        "musical",
        "detective series",
        "poetry collection",
        "animated film",
    ],
    "opinion": [
        "brilliant",
        "disappointing",
        "far too long",
        "surprisingly moving",
        "a bit predictable",
        "beautifully shot",
        "hard to follow",
        "great fun",
    ],
    "product": [
        "vacuum cleaner",
        "coffee machine",
        "pair of boots",
        "desk lamp",
        "backpack",
        "electric kettle",
        "keyboard",
        "tent",
        "blender",
        "office chair",
        "smartwatch",
    ],
    "verdict": [
        "works perfectly",
        "broke after a month",
        "is much louder than expected",
        "was easy to set up",
        "feels cheap",
        "is worth every penny",
        "arrived without the manual",
        "stopped charging after a week",
    ],
    "task": [
        "update the software",
        "change the password",
        "clean the filter",
        "back up your files",
        "replace the batteries",
        "check the tyre pressure",
        "water the plants",
        "defrost the freezer",
        "sign the form",
    ],
    "subject": [
        "chemistry",
        "history",
        "economics",
        "geography",
        "music",
        "statistics",
        "philosophy",
        "biology",
        "art",
        "law",
    ],
    "historic": [
        "The castle",
        "The bridge",
        "The cathedral",
        "The canal",
        "The lighthouse",
        "The old mill",
        "The city wall",
        "The observatory",
        "The market hall",
    ],
    "century": ["twelfth", "fourteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth"],
    "feeling": [
        "exhausted",
        "thrilled",
        "a bit nervous",
        "relieved",
        "bored",
        "grateful",
        "annoyed",
        "homesick",
        "optimistic",
    ],
    "number": ["two", "three", "four", "six", "eight", "ten", "fifteen", "thirty"],
}

TEMPLATES: list[str] = [
    # everyday
    "{name} left the {object} at {place} {day}.",
    "Have you seen my {object}? I had them a minute ago.",
    "I'm meeting {name} outside {place} {day}.",
    "Could you pick up some {food} on your way home?",
    "We made {food} for dinner and there is plenty left over.",
    "The {vehicle} was {number} minutes late, so I missed the start of the meeting.",
    "{name} is moving to {city} {day} and needs help with the boxes.",
    "I feel {feeling} after such a long week.",
    "Is {place} open {day}?",
    "Don't forget to {task} before you go on holiday.",
    "It took me {number} tries to {task}, but it finally worked.",
    "My {object} fell behind the sofa and I only found it {day}.",
    # news and economy
    "{company} said {econ} {direction} by {pct} percent in the last quarter.",
    "Analysts expect {econ} to stay flat despite the weaker currency.",
    "{econ} {direction} sharply in {city} as demand changed.",
    "Shares in {company} {direction} after the chief executive stepped down.",
    "{official} announced {policy} on {day_plain}.",
    "{official} rejected calls for {policy}.",
    "Critics say {policy} will cost more than the government admits.",
    "{disaster} hit {region}, cutting power to thousands of homes.",
    "{disaster} is forecast to reach {region} {day}.",
    "Rescue teams in {city} worked through the night after {disaster_lower} struck.",
    "Thousands marched through {city} to demand {policy}.",
    # sport
    "{team} won the {sport} final after a dramatic second half.",
    "{team} lost their opening {sport} match for the first time in years.",
    "{name} has trained for {sport} every morning since the age of {number}.",
    "Tickets for the {sport} championship in {city} are already sold out.",
    "The {sport} season was suspended because of the weather.",
    # technology
    "{tech} {bug}, so we {fix}.",
    "After we {fix}, {tech} stopped failing.",
    "Why does {tech} {bug_plain} only in production?",
    "Can someone review my change to {tech} before the release?",
    "I am learning {lang} and still struggle with {concept}.",
    "A good introduction to {concept} uses small examples in {lang}.",
    "The tutorial explains {concept} in {lang} in under ten minutes.",
    "Please add a test that covers the case where {tech} {bug}.",
    "The dashboard shows that {tech} was down for {number} minutes {day}.",
    "Deploy the fix for {tech} {day}, after the backups finish.",
    # science and health
    "{science} {finding}.",
    "{science} {finding}, but more work is needed.",
    "If you have {symptom}, {advice}.",
    "The pharmacist told me to {advice} because of {symptom}.",
    "{name} went to the clinic {day} with {symptom}.",
    "A {animal} was seen near {place} for the first time in decades.",
    "The {animal} population has recovered thanks to a protection programme.",
    "Why do {animal_plural} come into towns in winter?",
    # culture and opinion
    "The new {genre} about life in {city} is {opinion}.",
    "I thought the {genre} was {opinion}, but my friends loved it.",
    "{name} recommended a {genre} that turned out to be {opinion}.",
    "The festival in {city} will show a {genre} every night this week.",
    # reviews
    "This {product} {verdict}.",
    "The {product} {verdict}, and customer support never replied.",
    "I bought the {product} for my kitchen and it {verdict}.",
    "Would you recommend this {product}? Mine {verdict}.",
    # questions
    "How long does it take to get from {city} to the coast by {vehicle}?",
    "What is the best way to learn {subject} as an adult?",
    "Where can I buy a cheap {product} in {city}?",
    "Who is giving the {subject} lecture {day}?",
    "Is it worth visiting {city} in winter?",
    "How do I {task} without losing my settings?",
    # instructions
    "To {task}, switch off the power and wait {number} seconds.",
    "Remember to {task} at least once a month.",
    "Take the {vehicle} to {place} and ask for {name} at the desk.",
    "Before the exam, review the {subject} notes from the first {number} weeks.",
    # education and history
    "{name} is studying {subject} at the university in {city}.",
    "The {subject} course has {number} assignments and one final exam.",
    "{historic} in {city} was built in the {century} century.",
    "{historic} was rebuilt after a fire in the {century} century.",
    "Visitors can climb {historic_lower} on weekends from April to October.",
    # travel
    "Our {vehicle} to {city} was cancelled because of {disaster_lower}.",
    "We spent {number} days in {city} and ate {food} almost every night.",
    "The cheapest way to reach {city} is by {vehicle}.",
    "{name} says the food in {city} is the best she has ever had.",
]

PLAIN_FORMS = {
    "day_plain": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
}


def _fill(template: str, rng: random.Random) -> str:
    def pick(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in PLAIN_FORMS:
            return rng.choice(PLAIN_FORMS[key])
        if key.endswith("_lower"):
            value = rng.choice(SLOTS[key.removesuffix("_lower")])
            return value[0].lower() + value[1:]
        if key == "bug_plain":
            return (
                rng.choice(SLOTS["bug"])
                .replace("returns", "return")
                .replace("crashes", "crash")
                .replace("leaks", "leak")
                .replace("logs", "log")
                .replace("uses", "use")
                .replace("rejects", "reject")
                .replace("ignores", "ignore")
                .replace("times out", "time out")
                .replace("double-charges", "double-charge")
            )
        if key == "animal_plural":
            animal = rng.choice(SLOTS["animal"])
            return {"fox": "foxes", "deer": "deer", "lynx": "lynxes", "goose": "geese"}.get(
                animal, animal + "s"
            )
        return rng.choice(SLOTS[key])

    text = re.sub(r"\{(\w+)\}", pick, template)
    return text[0].upper() + text[1:]


def generate(count: int = COUNT, seed: int = SEED, exclude: set[str] | None = None) -> list[str]:
    rng = random.Random(seed)
    exclude = exclude or set()
    seen: set[str] = set()
    sentences: list[str] = []
    while len(sentences) < count:
        sentence = _fill(rng.choice(TEMPLATES), rng)
        if sentence not in seen and sentence not in exclude:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def main() -> None:
    here = Path(__file__).resolve().parents[1] / "compressor" / "data"
    evaluation = set((here / "sentences.txt").read_text(encoding="utf-8").splitlines())
    lines = generate(exclude=evaluation)
    (here / "sentences_train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} sentences")


if __name__ == "__main__":
    main()
